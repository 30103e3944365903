// The parsers of untrusted bytes: websocket frames, URLs, dates, the command line.
#include <gtest/gtest.h>

#include "elsa/proxy/options.h"
#include "iso_time.h"
#include "url.h"
#include "ws_codec.h"

namespace elsa::proxy {
namespace {

std::string Frame(WsOpcode op, std::string_view payload, bool fin = true, bool masked = true) {
  std::string out;
  const uint8_t mask[4] = {1, 2, 3, 4};
  AppendWsFrame(out, op, fin, payload, masked ? mask : nullptr);
  return out;
}

TEST(WsCodec, RoundTripsFragmentedAndLargeMessages) {
  WsReader r(true, 1 << 20);
  std::string big(70000, 'x');
  r.Feed(Frame(WsOpcode::kText, "hel", false) + Frame(WsOpcode::kPing, "p") +
         Frame(WsOpcode::kContinuation, "lo") + Frame(WsOpcode::kBinary, big));
  auto ping = r.Next();
  ASSERT_TRUE(ping.ok() && *ping);
  EXPECT_EQ((*ping)->kind, WsEvent::Kind::kPing);
  auto text = r.Next();
  ASSERT_TRUE(text.ok() && *text);
  EXPECT_EQ((*text)->payload, "hello");
  EXPECT_TRUE((*text)->text);
  auto bin = r.Next();
  ASSERT_TRUE(bin.ok() && *bin);
  EXPECT_EQ((*bin)->payload.size(), big.size());
  auto none = r.Next();
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(*none);
  EXPECT_TRUE(r.Idle());
}

TEST(WsCodec, ByteByByteIsTheSame) {
  WsReader r(false, 1024);
  std::string f = Frame(WsOpcode::kText, "abc", true, false);
  for (size_t i = 0; i + 1 < f.size(); ++i) {
    r.Feed(f.substr(i, 1));
    auto ev = r.Next();
    ASSERT_TRUE(ev.ok());
    EXPECT_FALSE(*ev);
  }
  r.Feed(f.substr(f.size() - 1));
  auto ev = r.Next();
  ASSERT_TRUE(ev.ok() && *ev);
  EXPECT_EQ((*ev)->payload, "abc");
}

uint16_t CloseCodeFor(std::string bytes, bool expect_masked = true, size_t max = 1024) {
  WsReader r(expect_masked, max);
  r.Feed(bytes);
  auto ev = r.Next();
  return ev.ok() ? 0 : r.close_code();
}

TEST(WsCodec, RefusesHostileFrames) {
  EXPECT_EQ(CloseCodeFor(Frame(WsOpcode::kText, "x", true, false)), kCloseProtocolError);  // unmasked
  EXPECT_EQ(CloseCodeFor(Frame(WsOpcode::kText, "x", true, true), false), kCloseProtocolError);
  EXPECT_EQ(CloseCodeFor(std::string("\xC1\x80\0\0\0\0", 6)), kCloseProtocolError);  // RSV1
  EXPECT_EQ(CloseCodeFor(std::string("\x83\x80\0\0\0\0", 6)), kCloseProtocolError);  // opcode 3
  EXPECT_EQ(CloseCodeFor(Frame(WsOpcode::kPing, "p", false)), kCloseProtocolError);   // fragmented
  EXPECT_EQ(CloseCodeFor(Frame(WsOpcode::kPing, std::string(126, 'p'))), kCloseProtocolError);
  EXPECT_EQ(CloseCodeFor(Frame(WsOpcode::kContinuation, "x")), kCloseProtocolError);
  EXPECT_EQ(CloseCodeFor(Frame(WsOpcode::kText, "\xFF\xFE")), kCloseInvalidPayload);
  EXPECT_EQ(CloseCodeFor(Frame(WsOpcode::kBinary, std::string(2000, 'x'))), kCloseTooBig);
  // A 2^63-ish length is refused from the header alone, before any payload.
  EXPECT_EQ(CloseCodeFor(std::string("\x82\xFF\x7F\xFF\xFF\xFF\xFF\xFF\xFF\xFF", 10)), kCloseTooBig);
  EXPECT_EQ(CloseCodeFor(std::string("\x82\xFF\x80\0\0\0\0\0\0\0", 10)), kCloseProtocolError);
  EXPECT_EQ(CloseCodeFor(Frame(WsOpcode::kClose, std::string("\x03\xE8", 2) + "\xFF")), kCloseInvalidPayload);
  EXPECT_EQ(CloseCodeFor(Frame(WsOpcode::kClose, std::string("\x03\xED", 2))), kCloseProtocolError);  // 1005
}

TEST(WsCodec, HandshakeAcceptValue) {
  EXPECT_EQ(WsAcceptFor("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");  // RFC 6455
}

TEST(Url, DecodingAndTargets) {
  EXPECT_EQ(*DecodeUriComponent("/user/a%20b%2Fc"), "/user/a b/c");
  EXPECT_FALSE(DecodeUriComponent("%").ok());
  EXPECT_FALSE(DecodeUriComponent("%C0%AF").ok());  // overlong '/'
  EXPECT_TRUE(HasDotSegment("/user/alice/../bob"));
  EXPECT_FALSE(HasDotSegment("/user/alice/..x"));
  auto t = ParseTargetUrl("http://127.0.0.1:8888/base");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->port, 8888);
  EXPECT_EQ(JoinForwardPath(t->path, "/user/alice/api?x=1"), "/base/user/alice/api?x=1");
  EXPECT_EQ(JoinForwardPath("/", "/user/alice"), "/user/alice");
  EXPECT_FALSE(ParseTargetUrl("http://h:99999").ok());
  EXPECT_FALSE(ParseTargetUrl("file:///etc/passwd").ok());
  EXPECT_EQ(*QueryValue("a=1&inactive_since=2020-01-01&a=2", "a"), "1,2");
}

TEST(IsoTime, FormatsAndParsesAsJavaScript) {
  EXPECT_EQ(FormatIsoMillis(0), "1970-01-01T00:00:00.000Z");
  EXPECT_EQ(*ParseIsoMillis("1970-01-01T00:00:01.5Z"), 1500);
  EXPECT_EQ(*ParseIsoMillis("2020-01-01"), 1577836800000);
  EXPECT_FALSE(ParseIsoMillis("yesterday"));
  EXPECT_FALSE(ParseIsoMillis("2020-13-01"));
}

Result<Options> Parse(std::vector<const char*> args, const char* token = "t") {
  args.insert(args.begin(), "elsa-proxy");
  std::string text;
  return ParseCommandLine(args, token, &text);
}

TEST(Options, WhatJupyterHubPasses) {
  auto o = Parse({"--ip", "", "--port", "8000", "--api-ip", "127.0.0.1", "--api-port", "8001",
                  "--error-target", "http://127.0.0.1:8081/hub/error", "--log-level", "info"});
  ASSERT_TRUE(o.ok()) << o.status().message();
  EXPECT_EQ(o->ip, "");
  EXPECT_EQ(o->api_port, 8001);
  EXPECT_EQ(o->auth_token, "t");
  EXPECT_EQ(Parse({"--port", "8000"})->api_port, 8001);  // CHP's default: port + 1
  EXPECT_FALSE(Parse({"--port", "70000"}).ok());
  EXPECT_FALSE(Parse({"--ssl-key", "k"}).ok());  // without its certificate
  EXPECT_FALSE(Parse({"--error-target", "x", "--error-path", "y"}).ok());
  EXPECT_FALSE(Parse({"--log-level", "chatty"}).ok());
  EXPECT_FALSE(Parse({"--no-such-flag"}).ok());
}

TEST(Options, LogFormat) {
  EXPECT_EQ(Parse({})->log_format, LogFormat::kText);
  EXPECT_EQ(Parse({"--log-format", "json"})->log_format, LogFormat::kJson);
  EXPECT_FALSE(Parse({"--log-format", "xml"}).ok());
}

}  // namespace
}  // namespace elsa::proxy
