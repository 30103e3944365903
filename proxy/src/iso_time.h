// Times as CHP's API shows and reads them: JavaScript's Date.toISOString() and Date.parse().
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace elsa::proxy {

// Milliseconds since the Unix epoch, from the system clock.
int64_t NowMillis();

// "2024-05-01T12:34:56.789Z", as Date.prototype.toISOString (years outside 0..9999 as +YYYYYY).
std::string FormatIsoMillis(int64_t unix_ms);

// What Date.parse accepts in ISO form: YYYY, YYYY-MM, YYYY-MM-DD, each optionally followed by
// THH:mm, THH:mm:ss or THH:mm:ss.fff (any number of fraction digits) and Z or +HH:mm/-HH:mm;
// also ±YYYYYY years and a space instead of T. Date-only forms are UTC; date-times without
// an offset are local time (as in ES2015+). nullopt if not a valid date.
std::optional<int64_t> ParseIsoMillis(std::string_view text);

}  // namespace elsa::proxy
