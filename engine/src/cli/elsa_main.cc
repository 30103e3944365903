// elsa: the command-line client of the Elsa agent.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>

#include "elsa/engine/api.h"
#include "elsa/json_reader.h"

namespace {

using nlohmann::json;

std::string HumanBytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) {
    bytes /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", bytes, units[u]);
  return buf;
}

std::string HumanDuration(double s) {
  char buf[32];
  if (s < 120) std::snprintf(buf, sizeof buf, "%.0fs", s);
  else if (s < 7200) std::snprintf(buf, sizeof buf, "%.0fm", s / 60);
  else if (s < 172800) std::snprintf(buf, sizeof buf, "%.1fh", s / 3600);
  else std::snprintf(buf, sizeof buf, "%.1fd", s / 86400);
  return buf;
}

std::string Joined(const json& arr) {
  std::string out;
  for (const auto& a : arr) {
    if (!out.empty()) out += ' ';
    out += a.get<std::string>();
  }
  return out;
}

class Cli {
 public:
  Cli(elsa::AgentEndpoint endpoint, bool json_out) : endpoint_(std::move(endpoint)), json_(json_out) {}

  // Sends a request; prints progress to stderr on a terminal. Exits non-zero on error.
  json Call(const json& request) {
    const bool show_progress = !json_ && ::isatty(2);
    auto result = elsa::CallAgent(endpoint_, request, [&](const json& event) {
      if (show_progress && event.value("event", "") == "progress")
        std::fprintf(stderr, "  %-8s %s\n", event.value("phase", "").c_str(), event.value("detail", "").c_str());
    });
    if (!result.ok()) {
      if (json_) {
        std::cout << elsa::DumpJson(elsa::ErrorJson(result.status()), 2) << "\n";
      } else {
        std::fprintf(stderr, "elsa: %s\n", result.status().message().c_str());
      }
      std::exit(1);
    }
    return *result;
  }

  bool json_output() const { return json_; }
  void PrintJson(const nlohmann::json& j) const { std::cout << elsa::DumpJson(j, 2) << "\n"; }

 private:
  elsa::AgentEndpoint endpoint_;
  bool json_;
};

void PrintSessions(const json& list) {
  std::printf("%-20s %-13s %8s %6s %10s %8s  %s\n", "NAME", "STATE", "PID", "PROCS", "RSS", "UPTIME", "COMMAND");
  for (const auto& s : list) {
    const bool running = s["state"] == "running";
    std::printf("%-20s %-13s %8d %6s %10s %8s  %s\n", s["name"].get<std::string>().c_str(),
                s["state"].get<std::string>().c_str(), s["pid"].get<int>(),
                running ? std::to_string(s["processes"].get<int>()).c_str() : "-",
                running ? HumanBytes(s["rss_bytes"].get<double>()).c_str() : "-",
                running ? HumanDuration(s["uptime_seconds"].get<double>()).c_str() : "-",
                Joined(s["command"]).c_str());
  }
}

void PrintCheckpoints(const json& list) {
  std::printf("%-40s %-16s %-24s %10s %6s\n", "ID", "SESSION", "CREATED", "SIZE", "FILES");
  for (const auto& c : list)
    std::printf("%-40s %-16s %-24s %10s %6zu\n", c["id"].get<std::string>().c_str(),
                c["session"].get<std::string>().c_str(), c["created_at"].get<std::string>().c_str(),
                HumanBytes(c["size_bytes"].get<double>()).c_str(), c["files"].get<size_t>());
}

void PrintVerdicts(const json& r) {
  for (const auto& c : r["checkpoints"]) {
    if (c["intact"].get<bool>()) std::printf("%-40s intact\n", c["id"].get<std::string>().c_str());
    else std::printf("%-40s DAMAGED: %s\n", c["id"].get<std::string>().c_str(), c["error"].get<std::string>().c_str());
  }
  const size_t damaged = r["damaged"].size();
  if (damaged == 0) std::printf("all %zu checkpoints are intact\n", r["checkpoints"].size());
  else std::fprintf(stderr, "elsa: %zu of %zu checkpoints are damaged: %s\n", damaged, r["checkpoints"].size(),
                    Joined(r["damaged"]).c_str());
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"elsa: checkpoint, restore and migrate running Jupyter sessions.\n"
               "Talks to the local agent (elsad), which must run as root."};
  app.require_subcommand(1);
  auto env_or = [](const char* name, std::string fallback) {
    const char* value = std::getenv(name);
    return value ? std::string(value) : fallback;
  };
  elsa::AgentEndpoint endpoint;
  endpoint.socket_path = env_or("ELSA_SOCKET", elsa::kDefaultSocketPath);
  endpoint.address = env_or("ELSA_AGENT", "");
  endpoint.ca_file = env_or("ELSA_CA", "");
  endpoint.cert_file = env_or("ELSA_CERT", "");
  endpoint.key_file = env_or("ELSA_KEY", "");
  std::string token_file = env_or("ELSA_TOKEN_FILE", "");
  bool json_out = false;
  app.add_option("--socket", endpoint.socket_path, "the agent's socket (default: $ELSA_SOCKET or " +
                                                       std::string(elsa::kDefaultSocketPath) + ")");
  app.add_option("--agent", endpoint.address, "HOST:PORT of an agent's TLS API (elsad --api-listen; $ELSA_AGENT)");
  app.add_option("--ca", endpoint.ca_file, "with --agent: the CA of the agent's certificate ($ELSA_CA)");
  app.add_option("--cert", endpoint.cert_file, "with --agent: a client certificate (mutual TLS; $ELSA_CERT)");
  app.add_option("--key", endpoint.key_file, "its private key ($ELSA_KEY)");
  app.add_option("--token-file", token_file, "with --agent: a file holding a token of the agent's --api-tokens ($ELSA_TOKEN_FILE)");
  app.add_flag("--json", json_out, "print machine-readable JSON");

  std::string name, workdir, checkpoint_id;
  std::vector<std::string> command;
  bool leave_running = false;
  bool lazy = false;
  int timeout = 10;

  auto* run = app.add_subcommand("run", "start a command as a session: elsa run --name NAME -- CMD ARGS...");
  run->add_option("--name", name, "session name")->required();
  run->add_option("--workdir", workdir, "working directory (default: the current one)");
  run->add_option("command", command, "the command and its arguments, after --")->required();

  auto* ps = app.add_subcommand("ps", "list sessions with pid, state, RSS and uptime");
  auto* stop = app.add_subcommand("stop", "end a session (SIGTERM, then SIGKILL) and forget it");
  stop->add_option("name", name, "session name")->required();
  stop->add_option("--timeout", timeout, "seconds to wait before SIGKILL")->capture_default_str();
  auto* logs = app.add_subcommand("logs", "print a session's captured output");
  logs->add_option("name", name, "session name")->required();

  auto* cp = app.add_subcommand("checkpoint", "checkpoint a session to the store (the session ends unless --leave-running)");
  cp->add_option("name", name, "session name")->required();
  cp->add_flag("--leave-running", leave_running, "keep the session running after the checkpoint");
  auto* restore = app.add_subcommand("restore", "restore a checkpoint as a running session");
  restore->add_option("checkpoint", checkpoint_id, "checkpoint id")->required();
  restore->add_option("--name", name, "session name (default: the checkpointed session's)");
  restore->add_flag("--lazy", lazy,
                    "start the session before its memory is in: pages arrive on demand and in the background "
                    "(criu lazy-pages fed from the page store)");
  auto* list = app.add_subcommand("checkpoints", "list checkpoints");
  auto* rm = app.add_subcommand("rm", "delete a checkpoint and reclaim the pages no other checkpoint uses");
  rm->add_option("checkpoint", checkpoint_id, "checkpoint id")->required();
  auto* verify = app.add_subcommand(
      "verify", "check a checkpoint's files against its manifest and read back every page it names; "
                "without an id, every checkpoint (exit 1 when any is damaged)");
  verify->add_option("checkpoint", checkpoint_id, "checkpoint id (default: all)");
  auto* gc = app.add_subcommand("gc", "reclaim page-store space no checkpoint uses");
  auto* agent = app.add_subcommand("agent", "show the agent's status (socket, state directory, CRIU, page store)");
  std::string to, mode = "hybrid";
  int max_downtime_ms = 150;
  auto* migrate = app.add_subcommand("migrate", "move a running session to another host's agent, live");
  migrate->add_option("name", name, "session name")->required();
  migrate->add_option("--to", to, "the destination agent: HOST[:PORT] (its elsad --listen; port 7077)")->required();
  migrate->add_option("--mode", mode,
                      "precopy: memory copied while it runs, the rest while frozen (the source is not needed once "
                      "it runs there); postcopy: frozen at once, runs there while its memory follows; hybrid: "
                      "pre-copy, then post-copy for what changed since (shortest downtime)")
      ->check(CLI::IsMember({"precopy", "postcopy", "hybrid"}))
      ->capture_default_str();
  migrate->add_option("--max-downtime", max_downtime_ms, "pre-copy until what is left fits in this (ms)")
      ->capture_default_str();

  for (auto* sub : {run, ps, stop, logs, cp, restore, list, rm, verify, gc, agent, migrate})
    sub->add_flag("--json", json_out, "print machine-readable JSON");
  CLI11_PARSE(app, argc, argv);

  if (!token_file.empty()) {
    auto token = elsa::ReadClientToken(token_file);
    if (!token.ok()) {
      std::fprintf(stderr, "elsa: %s\n", token.status().message().c_str());
      return 1;
    }
    endpoint.token = *token;
  }
  const std::string agent_name = endpoint.Describe();
  Cli cli(std::move(endpoint), json_out);
  if (*run) {
    std::vector<std::string> env;
    for (char** e = environ; *e; ++e) env.emplace_back(*e);
    if (workdir.empty()) {
      char cwd[4096];
      workdir = ::getcwd(cwd, sizeof cwd) ? cwd : "/";
    }
    json s = cli.Call({{"op", "run"}, {"name", name}, {"argv", command}, {"env", env}, {"workdir", workdir}});
    if (cli.json_output()) cli.PrintJson(s);
    else std::printf("session %s running, pid %d; output in %s\n", s["name"].get<std::string>().c_str(),
                     s["pid"].get<int>(), s["log"].get<std::string>().c_str());
  } else if (*ps) {
    json l = cli.Call({{"op", "ps"}});
    cli.json_output() ? cli.PrintJson(l) : PrintSessions(l);
  } else if (*stop) {
    json r = cli.Call({{"op", "stop"}, {"name", name}, {"timeout_seconds", timeout}});
    cli.json_output() ? cli.PrintJson(r) : (void)std::printf("session %s stopped\n", name.c_str());
  } else if (*logs) {
    json s = cli.Call({{"op", "session"}, {"name", name}});
    std::ifstream in(s["log"].get<std::string>());
    if (!in) {
      std::fprintf(stderr, "elsa: cannot read %s\n", s["log"].get<std::string>().c_str());
      return 1;
    }
    std::cout << in.rdbuf();
  } else if (*cp) {
    json r = cli.Call({{"op", "checkpoint"}, {"name", name}, {"leave_running", leave_running}});
    if (cli.json_output()) {
      cli.PrintJson(r);
    } else {
      const json& c = r["checkpoint"];
      const json& t = r["timings"];
      const json& p = c["pages"];
      std::printf("checkpoint %s\n  images %s in %zu files; pages %s in the page store, %s of them new\n"
                  "  dump %.3f s, commit %.3f s, total %.3f s%s\n",
                  c["id"].get<std::string>().c_str(), HumanBytes(c["size_bytes"].get<double>()).c_str(),
                  c["files"].get<size_t>(), HumanBytes(p["count"].get<double>() * 4096).c_str(),
                  HumanBytes(p["new"].get<double>() * 4096).c_str(), t["dump_seconds"].get<double>(),
                  t["commit_seconds"].get<double>(), t["total_seconds"].get<double>(),
                  leave_running ? " (session left running)" : "");
    }
  } else if (*restore) {
    json req = {{"op", "restore"}, {"checkpoint", checkpoint_id}, {"lazy", lazy}};
    if (!name.empty()) req["name"] = name;
    json r = cli.Call(req);
    if (cli.json_output()) {
      cli.PrintJson(r);
    } else {
      const json& t = r["timings"];
      std::printf("session %s restored from %s, pid %d\n  verify %.3f s, pages %.3f s, restore %.3f s, total %.3f s\n",
                  r["session"]["name"].get<std::string>().c_str(), checkpoint_id.c_str(),
                  r["session"]["pid"].get<int>(), t["verify_seconds"].get<double>(),
                  t["materialize_seconds"].get<double>(), t["restore_seconds"].get<double>(),
                  t["total_seconds"].get<double>());
      if (lazy)
        std::printf("  running; %s of memory still arriving in the background (elsa ps shows when it is in)\n",
                    HumanBytes(r["pages"]["lazy"].get<double>() * 4096).c_str());
    }
  } else if (*list) {
    json l = cli.Call({{"op", "checkpoints"}});
    cli.json_output() ? cli.PrintJson(l) : PrintCheckpoints(l);
  } else if (*rm) {
    json r = cli.Call({{"op", "rm"}, {"checkpoint", checkpoint_id}});
    cli.json_output() ? cli.PrintJson(r)
                      : (void)std::printf("checkpoint %s removed; %s of pages reclaimed\n", checkpoint_id.c_str(),
                                          HumanBytes(r["page_store"]["bytes_reclaimed"].get<double>()).c_str());
  } else if (*gc) {
    json r = cli.Call({{"op", "gc"}});
    cli.json_output() ? cli.PrintJson(r)
                      : (void)std::printf("page store: %s reclaimed; %llu pages kept, named by %llu checkpoints (%.3f s)\n",
                                          HumanBytes(r["bytes_reclaimed"].get<double>()).c_str(),
                                          r["pages_after"].get<unsigned long long>(),
                                          r["checkpoints_scanned"].get<unsigned long long>(), r["seconds"].get<double>());
  } else if (*verify && checkpoint_id.empty()) {
    json r = cli.Call({{"op", "verify"}});
    if (cli.json_output()) cli.PrintJson(r);
    else PrintVerdicts(r);
    return r["damaged"].empty() ? 0 : 1;
  } else if (*verify) {
    json m = cli.Call({{"op", "verify"}, {"checkpoint", checkpoint_id}});
    cli.json_output() ? cli.PrintJson(m)
               : (void)std::printf("checkpoint %s is intact: %zu files, %s\n", checkpoint_id.c_str(),
                                   m["files"].get<size_t>(), HumanBytes(m["size_bytes"].get<double>()).c_str());
  } else if (*migrate) {
    json r = cli.Call({{"op", "migrate"}, {"name", name}, {"to", to}, {"mode", mode}, {"max_downtime_ms", max_downtime_ms}});
    if (cli.json_output()) {
      cli.PrintJson(r);
    } else {
      const json& ph = r["phases"];
      const json& pages = r["pages"];
      std::printf("session %s now runs on %s (pid %d there), answering at %s\n"
                  "  downtime %.3f s (freeze to running); total %.3f s\n"
                  "  pre-copy %.3f s in %zu rounds, %s; freeze %.3f s, dump %.3f s, transfer %.3f s, restore %.3f s\n"
                  "  while frozen: %s sent\n",
                  name.c_str(), r["destination"].get<std::string>().c_str(), r["pid"].get<int>(),
                  r["address"].get<std::string>().c_str(), r["downtime_seconds"].get<double>(),
                  r["total_seconds"].get<double>(), ph["precopy_seconds"].get<double>(), r["precopy_rounds"].size(),
                  HumanBytes(r["bytes"]["precopy"].get<double>()).c_str(), ph["freeze_seconds"].get<double>(),
                  ph["dump_seconds"].get<double>(), ph["transfer_seconds"].get<double>(),
                  ph["restore_seconds"].get<double>(), HumanBytes(r["bytes"]["stop"].get<double>()).c_str());
      if (mode == "precopy")
        std::printf("  %llu of %llu dumped pages were already there\n",
                    pages["deduplicated"].get<unsigned long long>(), pages["dumped"].get<unsigned long long>());
      else
        std::printf("  post-copy %.3f s: %llu lazy pages, %llu already there (pre-copy), %llu sent (%s), %llu of them "
                    "first because the session waited\n",
                    ph["postcopy_seconds"].get<double>(), pages["lazy"].get<unsigned long long>(),
                    pages["deduplicated"].get<unsigned long long>(), pages["postcopy"].get<unsigned long long>(),
                    HumanBytes(r["bytes"]["postcopy"].get<double>()).c_str(), pages["faulted"].get<unsigned long long>());
    }
  } else if (*agent) {
    json v = cli.Call({{"op", "version"}});
    if (cli.json_output()) {
      cli.PrintJson(v);
    } else {
      std::printf("agent: %s\nstate: %s\ncriu:  %s\npages: %llu unique, %s on disk\n", agent_name.c_str(),
                  v["state_dir"].get<std::string>().c_str(),
                  v["criu"].is_string() ? v["criu"].get<std::string>().c_str()
                                        : v.value("criu_problem", "missing").c_str(),
                  v["page_store"]["unique_pages"].get<unsigned long long>(),
                  HumanBytes(v["page_store"]["stored_bytes"].get<double>()).c_str());
    }
  }
  return 0;
}
