// The plugin core: one DAW track's audio through a stemserve Stream session, at a fixed latency.
// It knows nothing of LV2 (or CLAP, VST3): a wrapper hands it channel pointers and control values.
//
// Threads
//   audio thread   process(): copies input into InputRing, output out of OutputRing, counts.
//                  In real time it never locks, allocates, sleeps or calls the system; when the
//                  host is offline (freewheeling: an export) it may wait for the server instead.
//   sender         owns the gRPC Stream: opens the session (all stems returned, one by one), sends
//                  audio blocks (consecutive seq, session positions), reconnects with backoff.
//   receiver       reads the stream's replies and places each frame's stems in OutputRing.
//
// Mixing: the audio thread mixes the stems of the frame it plays by the controls of the block it
// plays them in (target, gains, mix with the latency-aligned dry input), ramping a change linearly
// over kRampFrames from that block's first frame. So a control change, and a DAW's automation,
// acts on the output at once, where the host put it, and not one latency later as a change mixed
// by the server would (the server computes a block about a latency before the plugin plays it).
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
constexpr int kMaxStems = 8;          // sources a session may have (HTDemucs 6s has 6): OutputRing holds each
constexpr int kMaxChannels = 2;
constexpr uint64_t kNever = 1ull << 62;
constexpr uint32_t kChunk = 4096;     // host blocks are processed in pieces of at most this
constexpr uint32_t kRampFrames = 256;  // a control change ramps linearly over this many output frames

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
  uint32_t provisional_latency = 0;  // total when no server answers at activation (0: provisional_s + margin)
  // The provisional server latency, in seconds: longer than every bundled model's session latency
  // (the longest, chimera's, is 209 ms at any rate), so a server started after the DAW still fits.
  double provisional_s = 0.25;
  double connect_wait_s = 2.0;     // how long activate() waits for the first session
  double offline_timeout_s = 30.0; // how long an offline block waits for its stems
  double stall_timeout_s = 5.0;    // no reply for this long with blocks outstanding: reconnect
  double backoff_max_s = 2.0;
};

// Control values as the host sets them, read by process() at each block boundary.
struct Controls {
  int target = 1;  // 0: all stems (mixed by the gains); n >= 1: the model's n-th source (none: silence)
  float mix = 1.0f;
  float gains[kMaxGains] = {1.0f, 1.0f, 1.0f, 1.0f};
  bool enabled = true;           // false: bypass, the latency-aligned dry input (ramped like the mix)
  bool silence_on_underrun = false;  // a missing stem frame is silence instead of dry
};

// Monotonic counters; each is written by one thread (named).
struct Counters {
  // audio thread
  std::atomic<uint64_t> frames{0};
  std::atomic<uint64_t> underrun_blocks{0};  // blocks where a live session's stem frame was missing
  std::atomic<uint64_t> underrun_frames{0};
  std::atomic<uint64_t> gap_frames{0};       // frames no session could deliver (down, reconnecting)
  std::atomic<uint64_t> control_changes{0};  // blocks that started a ramp to new control values
  // network threads
  std::atomic<uint64_t> blocks_sent{0};
  std::atomic<uint64_t> blocks_received{0};
  std::atomic<uint64_t> late_frames{0};      // stem frames that arrived after being played
  std::atomic<uint64_t> input_lost_frames{0};
  std::atomic<uint64_t> sessions_opened{0};
  std::atomic<uint64_t> connect_failures{0};
  std::atomic<uint64_t> latency_refusals{0};  // sessions refused: latency above the fixed one, or too many stems
};

// The output mix as coefficients: output = sum_k wet[k] * stem_k + dry * (latency-aligned input).
struct Mix {
  float wet[kMaxStems];
  float dry;
  static Mix of(const Controls& controls);
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
  uint32_t activate();
  // Before activate(): the latency to fix when no server answers (the one saved with the session).
  void set_provisional_latency(uint32_t frames);
  // The fixed latency; 0 before activate().
  uint32_t latency() const;
  bool connected() const { return session_first_out_.load() < kNever; }
  const Counters& counters() const { return counters_; }

  // Audio thread ----------------------------------------------------------------------------
  // in / out: `channels` pointers to n frames each (they may alias). `controls`: the host's values
  // for this block (the first block's apply without a ramp). `offline`: the host is not real time
  // (freewheeling), so wait for the stems of this block.
  void process(const float* const* in, float* const* out, uint32_t n, const Controls& controls, bool offline);

 private:
  struct Session;
  void run_sender();
  bool serve(Session& session);
  void receive(Session& session);
  bool fix_latency(uint64_t total);
  bool resolve_model(const Connection& connection, std::string& model);
  void process_chunk(const float* const* in, float* const* out, uint32_t n, const Controls& controls, bool offline);
  void set_controls(const Controls& controls);
  void wait_for_stems(uint64_t pos, uint32_t n);
  void discard_input();
  void cancel_live();

  Settings settings_;
  uint64_t margin_;
  mutable std::mutex connection_mutex_;  // network and control threads only
  Connection connection_;
  std::atomic<uint64_t> connection_version_{0};

  InputRing in_ring_;
  // Sized for the fixed latency and allocated when it is fixed (a non-real-time thread), before
  // total_ publishes it: the audio thread touches it only once total_ >= 0, and it never changes after.
  std::unique_ptr<OutputRing> out_ring_;
  std::mutex fix_mutex_;  // fix_latency() callers: the sender and activate()
  Counters counters_;

  std::atomic<int64_t> total_{-1};
  uint32_t provisional_ = 0;
  std::atomic<uint64_t> session_first_out_{kNever};
  std::atomic<bool> opening_{false};  // sender: a session is being opened (offline blocks wait for it)
  std::atomic<bool> offline_{false};  // audio thread: the host's last block was offline
  uint64_t read_pos_ = 0;  // sender: next input frame to send or discard

  // audio thread
  uint64_t position_ = 0;
  Controls applied_;       // the controls of the last block
  bool have_applied_ = false;
  Mix ramp_from_{}, ramp_to_{};
  uint32_t ramp_done_ = kRampFrames;  // frames of the ramp from ramp_from_ to ramp_to_ played
  float dry_[kMaxChannels][kChunk];
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
};

}  // namespace stemserve
