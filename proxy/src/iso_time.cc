#include "iso_time.h"

#include <chrono>
#include <cstdio>
#include <ctime>

namespace elsa::proxy {

namespace {

constexpr int64_t kMsPerDay = 86400000;
constexpr int64_t kMaxTimeMs = 8640000000000000;  // ECMAScript's time range

// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
int64_t DaysFromCivil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const auto yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

void CivilFromDays(int64_t z, int64_t* y, unsigned* m, unsigned* d) {
  z += 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const auto doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  *d = doy - (153 * mp + 2) / 5 + 1;
  *m = mp < 10 ? mp + 3 : mp - 9;
  *y = static_cast<int64_t>(yoe) + era * 400 + (*m <= 2);
}

unsigned DaysInMonth(int64_t y, unsigned m) {
  static constexpr unsigned kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  return m == 2 && leap ? 29 : kDays[m - 1];
}

class Cursor {
 public:
  explicit Cursor(std::string_view s) : s_(s) {}
  bool Done() const { return i_ == s_.size(); }
  bool Peek(char c) const { return i_ < s_.size() && s_[i_] == c; }
  bool Eat(char c) {
    if (!Peek(c)) return false;
    ++i_;
    return true;
  }
  // Exactly n digits.
  bool Digits(int n, int64_t* out) {
    int64_t v = 0;
    for (int k = 0; k < n; ++k) {
      if (i_ >= s_.size() || s_[i_] < '0' || s_[i_] > '9') return false;
      v = v * 10 + (s_[i_++] - '0');
    }
    *out = v;
    return true;
  }
  char Next() { return i_ < s_.size() ? s_[i_++] : '\0'; }
  bool AtDigit() const { return i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9'; }

 private:
  std::string_view s_;
  size_t i_ = 0;
};

// Local wall-clock time -> UTC milliseconds, with the zone's rules for that date.
std::optional<int64_t> LocalToUtc(int64_t y, unsigned mo, unsigned d, int64_t h, int64_t mi,
                                  int64_t sec, int64_t ms) {
  std::tm tm{};
  tm.tm_year = static_cast<int>(y - 1900);
  tm.tm_mon = static_cast<int>(mo) - 1;
  tm.tm_mday = static_cast<int>(d);
  tm.tm_hour = static_cast<int>(h);
  tm.tm_min = static_cast<int>(mi);
  tm.tm_sec = static_cast<int>(sec);
  tm.tm_isdst = -1;
  std::time_t t = std::mktime(&tm);
  if (t == static_cast<std::time_t>(-1) && !(y == 1969 && mo == 12 && d == 31)) return std::nullopt;
  return static_cast<int64_t>(t) * 1000 + ms;
}

}  // namespace

int64_t NowMillis() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string FormatIsoMillis(int64_t unix_ms) {
  int64_t days = unix_ms >= 0 ? unix_ms / kMsPerDay : (unix_ms - kMsPerDay + 1) / kMsPerDay;
  int64_t rem = unix_ms - days * kMsPerDay;
  int64_t y = 0;
  unsigned m = 0;
  unsigned d = 0;
  CivilFromDays(days, &y, &m, &d);
  char buf[64];
  int h = static_cast<int>(rem / 3600000);
  int mi = static_cast<int>(rem / 60000 % 60);
  int s = static_cast<int>(rem / 1000 % 60);
  int ms = static_cast<int>(rem % 1000);
  if (y >= 0 && y <= 9999) {
    std::snprintf(buf, sizeof buf, "%04d-%02u-%02uT%02d:%02d:%02d.%03dZ", static_cast<int>(y), m, d, h,
                  mi, s, ms);
  } else {
    std::snprintf(buf, sizeof buf, "%c%06lld-%02u-%02uT%02d:%02d:%02d.%03dZ", y < 0 ? '-' : '+',
                  static_cast<long long>(y < 0 ? -y : y), m, d, h, mi, s, ms);
  }
  return buf;
}

std::optional<int64_t> ParseIsoMillis(std::string_view text) {
  Cursor c(text);
  int64_t year = 0;
  if (c.Peek('+') || c.Peek('-')) {
    bool negative = c.Next() == '-';
    if (!c.Digits(6, &year)) return std::nullopt;
    if (negative && year == 0) return std::nullopt;  // -000000 is not a year
    if (negative) year = -year;
  } else if (!c.Digits(4, &year)) {
    return std::nullopt;
  }
  int64_t month = 1;
  int64_t day = 1;
  if (c.Eat('-')) {
    if (!c.Digits(2, &month) || month < 1 || month > 12) return std::nullopt;
    if (c.Eat('-')) {
      if (!c.Digits(2, &day) || day < 1 ||
          day > DaysInMonth(year, static_cast<unsigned>(month))) {
        return std::nullopt;
      }
    }
  }
  int64_t hour = 0, minute = 0, second = 0, millis = 0;
  bool utc = true;  // date-only forms are UTC
  int64_t offset_min = 0;
  if (c.Peek('T') || c.Peek('t') || c.Peek(' ')) {
    c.Next();
    utc = false;
    if (!c.Digits(2, &hour) || !c.Eat(':') || !c.Digits(2, &minute)) return std::nullopt;
    if (c.Eat(':')) {
      if (!c.Digits(2, &second)) return std::nullopt;
      if (c.Eat('.')) {
        if (!c.AtDigit()) return std::nullopt;
        int digits = 0;
        while (c.AtDigit()) {
          int64_t dgt = 0;
          c.Digits(1, &dgt);
          if (digits < 3) millis = millis * 10 + dgt;
          ++digits;
        }
        for (; digits < 3; ++digits) millis *= 10;
      }
    }
    if (hour > 24 || minute > 59 || second > 59) return std::nullopt;
    if (hour == 24 && (minute || second || millis)) return std::nullopt;
    if (c.Eat('Z') || c.Eat('z')) {
      utc = true;
    } else if (c.Peek('+') || c.Peek('-')) {
      int sign = c.Next() == '-' ? -1 : 1;
      int64_t oh = 0, om = 0;
      if (!c.Digits(2, &oh) || !c.Eat(':') || !c.Digits(2, &om) || oh > 23 || om > 59) {
        return std::nullopt;
      }
      utc = true;
      offset_min = sign * (oh * 60 + om);
    }
  }
  if (!c.Done()) return std::nullopt;
  int64_t result = 0;
  if (utc) {
    int64_t days = DaysFromCivil(year, static_cast<unsigned>(month), static_cast<unsigned>(day));
    result = days * kMsPerDay + ((hour * 60 + minute - offset_min) * 60 + second) * 1000 + millis;
  } else {
    auto local = LocalToUtc(year, static_cast<unsigned>(month), static_cast<unsigned>(day), hour,
                            minute, second, millis);
    if (!local) return std::nullopt;
    result = *local;
  }
  if (result > kMaxTimeMs || result < -kMaxTimeMs) return std::nullopt;
  return result;
}

}  // namespace elsa::proxy
