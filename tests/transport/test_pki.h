// Certificates for tests, made in-process with OpenSSL's APIs: a fleet CA and agents'
// certificates as tools/elsa-ca issues them (P-256, serverAuth+clientAuth, URI SAN
// elsa-agent:NAME, IP SAN), and the broken ones a test needs (expired, another CA, no agent name).
#pragma once

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>

#include "elsa/file_util.h"
#include "elsa/openssl_util.h"
#include "elsa/transport/transport.h"

namespace elsa::transport::testing {

struct EvpPkeyFree {
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};
using EvpPkeyPtr = std::unique_ptr<EVP_PKEY, EvpPkeyFree>;
struct FileClose {
  void operator()(FILE* f) const { std::fclose(f); }
};

struct CertSpec {
  std::string agent;                           // URI SAN elsa-agent:NAME; empty: none
  std::string ip = "127.0.0.1";                // IP SAN
  long not_before_s = -3600;                   // relative to now
  long not_after_s = 30L * 24 * 3600;          // relative to now
  std::string usage = "serverAuth,clientAuth";  // extendedKeyUsage
};

class TestCa {
 public:
  // A CA named `name` whose files live in `dir` (which must exist).
  TestCa(const std::string& dir, const std::string& name) : dir_(dir), name_(name) {
    key_.reset(EVP_EC_gen("P-256"));
    cert_.reset(X509_new());
    X509_set_version(cert_.get(), 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert_.get()), serial_++);
    X509_gmtime_adj(X509_getm_notBefore(cert_.get()), -3600);
    X509_gmtime_adj(X509_getm_notAfter(cert_.get()), 365L * 24 * 3600);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(cert_.get()), "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>(name.c_str()), -1, -1, 0);
    X509_set_issuer_name(cert_.get(), X509_get_subject_name(cert_.get()));
    X509_set_pubkey(cert_.get(), key_.get());
    AddExtension(cert_.get(), NID_basic_constraints, "critical,CA:TRUE");
    AddExtension(cert_.get(), NID_key_usage, "critical,keyCertSign,cRLSign");
    X509_sign(cert_.get(), key_.get(), EVP_sha256());
    ca_file_ = dir_ + "/" + name_ + "-ca.crt";
    WritePem(ca_file_, [&](FILE* f) { return PEM_write_X509(f, cert_.get()); });
  }

  const std::string& ca_file() const { return ca_file_; }

  // Writes FILE.crt and FILE.key (mode 600) for `spec` and returns them as PeerTls (with this CA).
  PeerTls Issue(const std::string& file, const CertSpec& spec) {
    EvpPkeyPtr key(EVP_EC_gen("P-256"));
    X509Ptr cert(X509_new());
    X509_set_version(cert.get(), 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), serial_++);
    X509_gmtime_adj(X509_getm_notBefore(cert.get()), spec.not_before_s);
    X509_gmtime_adj(X509_getm_notAfter(cert.get()), spec.not_after_s);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(cert.get()), "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>(file.c_str()), -1, -1, 0);
    X509_set_issuer_name(cert.get(), X509_get_subject_name(cert_.get()));
    X509_set_pubkey(cert.get(), key.get());
    AddExtension(cert.get(), NID_basic_constraints, "critical,CA:FALSE");
    AddExtension(cert.get(), NID_key_usage, "critical,digitalSignature");
    AddExtension(cert.get(), NID_ext_key_usage, spec.usage);
    std::string sans = "IP:" + spec.ip;
    if (!spec.agent.empty()) sans += ",URI:elsa-agent:" + spec.agent;
    AddExtension(cert.get(), NID_subject_alt_name, sans);
    X509_sign(cert.get(), key_.get(), EVP_sha256());
    PeerTls tls;
    tls.cert_file = dir_ + "/" + file + ".crt";
    tls.key_file = dir_ + "/" + file + ".key";
    tls.ca_file = ca_file_;
    WritePem(tls.cert_file, [&](FILE* f) { return PEM_write_X509(f, cert.get()); });
    WritePem(tls.key_file, [&](FILE* f) {
      return PEM_write_PrivateKey(f, key.get(), nullptr, nullptr, 0, nullptr, nullptr);
    });
    return tls;
  }

 private:
  void AddExtension(X509* cert, int nid, const std::string& value) {
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, cert_ ? cert_.get() : cert, cert, nullptr, nullptr, 0);
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
    ASSERT_NE(ext, nullptr) << "extension " << value << ": " << TakeOpenSslErrors();
    X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
  }
  template <typename Write>
  static void WritePem(const std::string& path, Write write) {
    std::unique_ptr<FILE, FileClose> f(std::fopen(path.c_str(), "w"));
    ASSERT_TRUE(f) << path;
    ::fchmod(::fileno(f.get()), 0600);
    ASSERT_EQ(write(f.get()), 1) << path << ": " << TakeOpenSslErrors();
  }

  std::string dir_;
  std::string name_;
  std::string ca_file_;
  EvpPkeyPtr key_;
  X509Ptr cert_;
  long serial_ = 1;
};

// The fleet the channel tests share: one CA, an agent "alpha" (connects) and "beta" (accepts).
struct TestFleet {
  ScopedPath dir;
  std::unique_ptr<TestCa> ca;
  PeerTls alpha;
  PeerTls beta;

  static TestFleet Make() {
    TestFleet fleet;
    auto dir = ScopedPath::MakeDirectory("/tmp/elsa-transport-pki-" + std::to_string(::getpid()));
    EXPECT_TRUE(dir.ok()) << dir.status().message();
    fleet.dir = std::move(*dir);
    fleet.ca = std::make_unique<TestCa>(fleet.dir.path(), "fleet");
    fleet.alpha = fleet.ca->Issue("alpha", {.agent = "alpha"});
    fleet.beta = fleet.ca->Issue("beta", {.agent = "beta"});
    return fleet;
  }
};

}  // namespace elsa::transport::testing
