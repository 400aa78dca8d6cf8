// The plugin core: one DAW track's audio through a stemserve Stream session, at a fixed latency.
// It knows nothing of LV2 (or CLAP, VST3): a wrapper hands it channel pointers and control values.
//
// Threads
//   audio thread   process(): copies input into InputRing, output out of OutputRing, counts.
//                  In real time it never locks, allocates, sleeps or calls the system; when the
//                  host is offline (freewheeling: an export) it may wait for the server instead.
//   sender         owns the gRPC Stream: opens the session, sends parameter changes and audio
//                  blocks (consecutive seq, session positions), reconnects with backoff.
//   receiver       reads the stream's replies and places stem frames in OutputRing.
//
// Latency (host frames): total = the first session's server latency L + margin, where margin is
// the host's largest block plus network slack. It is fixed once, for the life of the instance:
// host output frame n is the estimate for host input frame n - total. A later session (reconnect,
// new server) with latency L' <= total is placed total - L' frames after its input; one with
// L' > total is refused (dry meanwhile). With no server when the host activates the plugin, a
// provisional total is fixed instead and the plugin passes dry audio aligned to it.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "rings.hpp"

namespace stemserve {

constexpr int kMaxGains = 4;          // gain controls, for the model's first four sources
constexpr uint64_t kNever = 1ull << 62;
constexpr uint32_t kChunk = 4096;     // host blocks are processed in pieces of at most this
constexpr uint32_t kRampFrames = 256;  // the block that carries a parameter change (the server ramps over it)

// Where to connect; the wrapper's saved state (and environment overrides for headless tests).
struct Connection {
  std::string address = "127.0.0.1:50051";
  std::string model;  // empty: the server's default (the first model it lists)
  std::string token;  // bearer token, sent as `authorization` metadata when not empty
};

struct Settings {
  double sample_rate = 48000.0;
  int channels = 2;
  uint32_t host_block = 1024;      // the host's largest block: one must be in flight
  double margin_ms = 20.0;         // network slack on top of the server's latency
  uint32_t max_latency = 1u << 17; // the largest total the rings can delay by
  uint32_t provisional_latency = 0;  // total when no server answers at activation (0: 8192 + margin)
  double connect_wait_s = 2.0;     // how long activate() waits for the first session
  double offline_timeout_s = 30.0; // how long an offline block waits for its stems
  double stall_timeout_s = 5.0;    // no reply for this long with blocks outstanding: reconnect
  double backoff_max_s = 2.0;
};

// Control values as the host sets them, read by process() at each block boundary.
struct Controls {
  int target = 1;  // 0: all stems (mixed by the gains); n >= 1: the model's n-th source
  float mix = 1.0f;
  float gains[kMaxGains] = {1.0f, 1.0f, 1.0f, 1.0f};
  bool enabled = true;           // false: bypass, the latency-aligned dry input
  bool silence_on_underrun = false;  // a missing stem frame is silence instead of dry
};

// Monotonic counters; each is written by one thread (named).
struct Counters {
  // audio thread
  std::atomic<uint64_t> frames{0};
  std::atomic<uint64_t> underrun_blocks{0};  // blocks where a live session's stem frame was missing
  std::atomic<uint64_t> underrun_frames{0};
  std::atomic<uint64_t> gap_frames{0};       // frames no session could deliver (down, reconnecting)
  std::atomic<uint64_t> params_deferred{0};  // blocks whose parameter change waited for queue room
  // network threads
  std::atomic<uint64_t> blocks_sent{0};
  std::atomic<uint64_t> blocks_received{0};
  std::atomic<uint64_t> late_frames{0};      // stem frames that arrived after being played
  std::atomic<uint64_t> input_lost_frames{0};
  std::atomic<uint64_t> sessions_opened{0};
  std::atomic<uint64_t> connect_failures{0};
  std::atomic<uint64_t> latency_refusals{0};
  std::atomic<uint64_t> params_sent{0};
};

// A control change made at host input frame `pos`: it applies to the stems of the input from `pos`
// on, so the sender puts it on the wire L frames later (the session's output at position p is the
// estimate for input p - L, and the server switches its output at the block boundary).
struct ParamChange {
  uint64_t pos;  // host input frame from which it applies
  Controls controls;
};

class Core {
 public:
  Core(const Settings& settings, const Connection& connection);
  ~Core();
  Core(const Core&) = delete;
  Core& operator=(const Core&) = delete;

  // Non-real-time threads -------------------------------------------------------------------
  // Change where to connect; a live session on other settings is closed and re-opened.
  void set_connection(const Connection& connection);
  Connection connection() const;
  // Start the network threads (once) and fix the latency: waits up to connect_wait_s for the first
  // session; without one, fixes the provisional latency. Returns the total latency in host frames.
  // `initial`: the controls as the host set them, so that the session opens with them (a change
  // at the first block would be ramped by the server).
  uint32_t activate(const Controls& initial);
  // Before activate(): the latency to fix when no server answers (the one saved with the session).
  void set_provisional_latency(uint32_t frames);
  // The fixed latency; 0 before activate().
  uint32_t latency() const;
  bool connected() const { return session_first_out_.load() < kNever; }
  const Counters& counters() const { return counters_; }

  // Audio thread ----------------------------------------------------------------------------
  // in / out: `channels` pointers to n frames each (they may alias). `offline`: the host is not
  // real time (freewheeling), so wait for the stems of this block.
  void process(const float* const* in, float* const* out, uint32_t n, const Controls& controls, bool offline);

 private:
  struct Session;
  void run_sender();
  bool serve(Session& session);
  void receive(Session& session);
  bool fix_latency(uint64_t total);
  bool resolve_model(const Connection& connection, std::string& model, std::vector<std::string>& sources);
  void process_chunk(const float* const* in, float* const* out, uint32_t n, const Controls& controls, bool offline);
  void wait_for_stems(uint64_t pos, uint32_t n);
  void discard_input();
  void cancel_live();

  Settings settings_;
  uint64_t margin_;
  uint32_t ramp_;  // kRampFrames, at most the margin (an offline block never waits on its own ramp)
  mutable std::mutex connection_mutex_;  // network and control threads only
  Connection connection_;
  std::atomic<uint64_t> connection_version_{0};

  InputRing in_ring_;
  OutputRing out_ring_;
  SpscQueue<ParamChange, 64> param_queue_;
  Counters counters_;

  std::atomic<int64_t> total_{-1};
  uint32_t provisional_ = 0;
  std::atomic<uint64_t> session_first_out_{kNever};
  std::atomic<bool> opening_{false};  // sender: a session is being opened (offline blocks wait for it)
  std::atomic<bool> offline_{false};
  std::atomic<bool> reopened_{false};  // sender: the last session closed to re-open at once  // audio thread: the host's last block was offline
  uint64_t read_pos_ = 0;  // sender: next input frame to send or discard

  // audio thread
  uint64_t position_ = 0;
  Controls last_sent_;
  bool have_sent_ = false;
  float dry_[kChunk];
  bool ready_[kChunk];

  std::thread sender_;
  std::atomic<bool> stop_{false};
  std::mutex wake_mutex_;  // offline hand-offs only (the real-time path never touches it)
  std::condition_variable input_ready_;
  std::condition_variable arrived_;
  std::condition_variable session_changed_;
  std::atomic<uint64_t> attempts_{0};  // sessions tried (opened or not), for activate()
  std::mutex live_mutex_;  // guards live_ against the session's end (control threads cancel it)
  Session* live_ = nullptr;
  Controls current_;  // sender: the parameters in force
};

}  // namespace stemserve
