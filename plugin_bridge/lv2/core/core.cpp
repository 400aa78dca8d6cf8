// The plugin core (see core.hpp): the audio path, and the network threads that own the Stream.
#include "core.hpp"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "stemserve.grpc.pb.h"

namespace stemserve {

namespace {

using Clock = std::chrono::steady_clock;

// Network and control threads only: the audio thread never logs.
void log_line(const char* fmt, ...) {
  char line[1024];
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(line, sizeof line, fmt, args);
  va_end(args);
  std::fprintf(stderr, "stemserve.lv2: %s\n", line);
  std::fflush(stderr);
}

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

float unit(float v) { return std::isfinite(v) ? std::min(1.0f, std::max(0.0f, v)) : 0.0f; }

int supported_channels(int channels) { return std::min(kMaxChannels, std::max(1, channels)); }

bool same_parameters(const Controls& a, const Controls& b) {
  if (a.target != b.target || a.mix != b.mix || a.enabled != b.enabled) return false;
  for (int i = 0; i < kMaxGains; ++i)
    if (a.gains[i] != b.gains[i]) return false;
  return true;
}

std::shared_ptr<grpc::Channel> make_channel(const std::string& address) {
  grpc::ChannelArguments args;
  // gRPC's own reconnect backoff grows to 120 s; a DAW track wants its stems back within a second.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  args.SetMaxReceiveMessageSize(64 << 20);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

void add_token(grpc::ClientContext& context, const std::string& token) {
  // Plain metadata: gRPC drops call credentials on insecure channels.
  if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
}

}  // namespace

// The server's own rule (server/engine/session.py, SessionParameters.coefficients): the target's
// stem alone, or every stem by its gain (sources past the gain controls keep 1), times the mix;
// the rest of the mix is the dry input. A target past the session's sources selects a silent stem.
// Bypass is the dry input alone (so that switching it ramps too, without a click).
Mix Mix::of(const Controls& controls) {
  Mix m{};
  const float mix = controls.enabled ? unit(controls.mix) : 0.0f;
  for (int k = 0; k < kMaxStems; ++k) {
    const float weight = controls.target == 0 ? (k < kMaxGains ? unit(controls.gains[k]) : 1.0f)
                                              : (controls.target == k + 1 ? 1.0f : 0.0f);
    m.wet[k] = weight * mix;
  }
  m.dry = 1.0f - mix;
  return m;
}

struct Core::Session {
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReaderWriter<v1::StreamRequest, v1::StreamResponse>> stream;
  std::vector<std::string> sources;  // the session's, in the order the stems are kept in OutputRing
  uint64_t origin = 0;   // host input frame of the session's input frame 0
  uint64_t offset = 0;   // total - L: host output = origin + session output position + offset
  uint64_t latency = 0;  // L: the session's first L output frames estimate input from before it began
  std::atomic<bool> alive{true};
  std::atomic<uint64_t> sent{0};
  std::atomic<uint64_t> received{0};
  std::atomic<int64_t> waiting_since_ns{0};
  std::thread receiver;
};

Core::Core(const Settings& settings, const Connection& connection)
    : settings_(settings),
      margin_(settings.host_block + static_cast<uint64_t>(std::lround(settings.margin_ms * settings.sample_rate / 1000.0))),
      connection_(connection),
      in_ring_(supported_channels(settings.channels), pow2_at_least(uint64_t{settings.max_latency} + 2 * kChunk)) {
  settings_.channels = supported_channels(settings.channels);
  provisional_ = settings.provisional_latency
                     ? settings.provisional_latency
                     : static_cast<uint32_t>(std::lround(settings.provisional_s * settings.sample_rate) + margin_);
}

Core::~Core() {
  stop_.store(true);
  cancel_live();
  if (sender_.joinable()) sender_.join();
  const Counters& c = counters_;
  log_line("COUNTERS frames=%llu underrun_blocks=%llu underrun_frames=%llu gap_frames=%llu late_frames=%llu "
           "blocks_sent=%llu blocks_received=%llu sessions_opened=%llu connect_failures=%llu "
           "latency_refusals=%llu input_lost_frames=%llu control_changes=%llu",
           (unsigned long long)c.frames.load(), (unsigned long long)c.underrun_blocks.load(),
           (unsigned long long)c.underrun_frames.load(), (unsigned long long)c.gap_frames.load(),
           (unsigned long long)c.late_frames.load(), (unsigned long long)c.blocks_sent.load(),
           (unsigned long long)c.blocks_received.load(), (unsigned long long)c.sessions_opened.load(),
           (unsigned long long)c.connect_failures.load(), (unsigned long long)c.latency_refusals.load(),
           (unsigned long long)c.input_lost_frames.load(), (unsigned long long)c.control_changes.load());
}

// -- control threads ---------------------------------------------------------------------------
void Core::set_connection(const Connection& connection) {
  {
    std::lock_guard<std::mutex> lock(connection_mutex_);
    if (connection.address == connection_.address && connection.model == connection_.model &&
        connection.token == connection_.token)
      return;
    connection_ = connection;
  }
  connection_version_.fetch_add(1);
  cancel_live();
}

Connection Core::connection() const {
  std::lock_guard<std::mutex> lock(connection_mutex_);
  return connection_;
}

void Core::set_provisional_latency(uint32_t frames) {
  if (frames > 0 && frames <= settings_.max_latency) provisional_ = frames;
}

uint32_t Core::latency() const {
  const int64_t total = total_.load();
  return total < 0 ? 0 : static_cast<uint32_t>(total);
}

uint32_t Core::activate() {
  if (!sender_.joinable()) sender_ = std::thread(&Core::run_sender, this);
  // Wait for the first session, or the first failed attempt (a server that is down answers at
  // once), bounded: the host's thread must not hang on a network.
  const auto deadline = Clock::now() + std::chrono::duration<double>(settings_.connect_wait_s);
  while (total_.load() < 0 && attempts_.load() == 0 && Clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  if (fix_latency(provisional_))
    log_line("LATENCY %u frames (provisional: no server answered; dry audio until one does)", provisional_);
  return latency();
}

bool Core::fix_latency(uint64_t total) {
  if (total > settings_.max_latency) return false;
  std::lock_guard<std::mutex> lock(fix_mutex_);
  if (total_.load() >= 0) return false;
  // Stems for output frame p arrive once its input (p - total) was sent: at most total plus a
  // chunk ahead of the frame being played, so this many slots are never overwritten unplayed.
  const uint64_t slots = pow2_at_least(total + 2 * kChunk);
  out_ring_ = std::make_unique<OutputRing>(settings_.channels * kMaxStems, slots);
  total_.store(static_cast<int64_t>(total), std::memory_order_release);
  log_line("output ring: %llu frames of %d stems x %d channels (%.1f MB)", static_cast<unsigned long long>(slots),
           kMaxStems, settings_.channels,
           static_cast<double>(slots) * (settings_.channels * kMaxStems * sizeof(float) + sizeof(uint64_t)) / 1e6);
  return true;
}

void Core::cancel_live() {
  std::lock_guard<std::mutex> lock(live_mutex_);
  if (live_ != nullptr) live_->context.TryCancel();
}

// -- audio thread ------------------------------------------------------------------------------
void Core::process(const float* const* in, float* const* out, uint32_t n, const Controls& controls, bool offline) {
  const int channels = settings_.channels;
  const float* in_part[8];
  float* out_part[8];
  for (uint32_t start = 0; start < n; start += kChunk) {
    const uint32_t m = std::min(kChunk, n - start);
    for (int c = 0; c < channels && c < 8; ++c) {
      in_part[c] = in[c] + start;
      out_part[c] = out[c] + start;
    }
    process_chunk(in_part, out_part, m, controls, offline);
  }
}

void Core::set_controls(const Controls& controls) {
  // A change starts a ramp from the coefficients in force at this block's first frame (mid-ramp:
  // where the last ramp got to) to the new ones, reached at the ramp's last frame.
  const Mix next = Mix::of(controls);
  if (!have_applied_) {
    ramp_from_ = next;
    ramp_done_ = kRampFrames;
  } else {
    const float a = static_cast<float>(ramp_done_) / static_cast<float>(kRampFrames);
    for (int k = 0; k < kMaxStems; ++k) ramp_from_.wet[k] += (ramp_to_.wet[k] - ramp_from_.wet[k]) * a;
    ramp_from_.dry += (ramp_to_.dry - ramp_from_.dry) * a;
    ramp_done_ = 0;
    counters_.control_changes.fetch_add(1, std::memory_order_relaxed);
  }
  ramp_to_ = next;
  applied_ = controls;
  have_applied_ = true;
}

void Core::process_chunk(const float* const* in, float* const* out, uint32_t n, const Controls& controls,
                         bool offline) {
  const int channels = settings_.channels;
  if (!have_applied_ || !same_parameters(controls, applied_)) set_controls(controls);
  in_ring_.write(in, n);
  offline_.store(offline, std::memory_order_relaxed);
  if (offline) {
    input_ready_.notify_one();
    wait_for_stems(position_, n);
  }
  const int64_t total = total_.load(std::memory_order_acquire);
  OutputRing* const ring = total >= 0 ? out_ring_.get() : nullptr;
  const uint64_t first = session_first_out_.load(std::memory_order_acquire);
  const int64_t pos = static_cast<int64_t>(position_);
  uint64_t missing_live = 0, missing_gap = 0;
  for (uint32_t i = 0; i < n; ++i) {
    const uint64_t p = position_ + i;
    ready_[i] = ring != nullptr && ring->ready(p);
    if (!ready_[i] && controls.enabled) (p >= first ? missing_live : missing_gap) += 1;
  }
  for (int c = 0; c < channels; ++c) {
    if (total >= 0)
      in_ring_.history(pos - total, n, c, dry_[c]);
    else
      std::fill(dry_[c], dry_[c] + n, 0.0f);  // not activated: no latency to align to
  }
  const bool silence = controls.enabled && controls.silence_on_underrun;
  Mix m = ramp_to_;
  for (uint32_t i = 0; i < n; ++i) {
    if (ramp_done_ < kRampFrames && ++ramp_done_ < kRampFrames) {
      const float a = static_cast<float>(ramp_done_) / static_cast<float>(kRampFrames);
      for (int k = 0; k < kMaxStems; ++k) m.wet[k] = ramp_from_.wet[k] + (ramp_to_.wet[k] - ramp_from_.wet[k]) * a;
      m.dry = ramp_from_.dry + (ramp_to_.dry - ramp_from_.dry) * a;
    } else {
      m = ramp_to_;  // the ramp's last frame, or no ramp
    }
    if (!ready_[i]) {
      for (int c = 0; c < channels; ++c) out[c][i] = silence ? 0.0f : dry_[c][i];
      continue;
    }
    const float* stems = ring->frame(position_ + i);  // stem k, channel c at k * channels + c
    for (int c = 0; c < channels; ++c) {
      float y = m.dry * dry_[c][i];
      for (int k = 0; k < kMaxStems; ++k)
        if (m.wet[k] != 0.0f) y += m.wet[k] * stems[k * channels + c];  // a stem left out stays out
      out[c][i] = y;
    }
  }
  if (ring != nullptr) ring->set_read_pos(position_ + n);
  position_ += n;
  counters_.frames.fetch_add(n, std::memory_order_relaxed);
  if (missing_live) {
    counters_.underrun_blocks.fetch_add(1, std::memory_order_relaxed);
    counters_.underrun_frames.fetch_add(missing_live, std::memory_order_relaxed);
  }
  if (missing_gap) counters_.gap_frames.fetch_add(missing_gap, std::memory_order_relaxed);
}

void Core::wait_for_stems(uint64_t pos, uint32_t n) {
  // Offline only: the host is not real time, so the block may wait for its stems (bounded).
  const auto deadline = Clock::now() + std::chrono::duration<double>(settings_.offline_timeout_s);
  std::unique_lock<std::mutex> lock(wake_mutex_);
  while (true) {
    const uint64_t first = session_first_out_.load(std::memory_order_acquire);
    if (first >= kNever && !opening_.load()) return;  // no session, none opening: nothing is coming
    if (first >= kNever) {
      if (Clock::now() >= deadline) return;
      arrived_.wait_for(lock, std::chrono::milliseconds(5));
      continue;
    }
    const uint64_t begin = std::max(pos, first);
    if (begin >= pos + n || out_ring_->count_ready(begin, pos + n - begin) == pos + n - begin) return;
    if (Clock::now() >= deadline) return;
    arrived_.wait_for(lock, std::chrono::milliseconds(5));
  }
}

// -- the sender --------------------------------------------------------------------------------
void Core::discard_input() {
  // No session to send it to: the next session starts at the input written from now on.
  read_pos_ = in_ring_.write_pos();
}

void Core::run_sender() {
  double backoff = 0.1;
  std::mt19937 rng(std::random_device{}());
  std::uniform_real_distribution<double> jitter(0.8, 1.2);
  while (!stop_.load()) {
    const uint64_t version = connection_version_.load();
    bool opened = false;
    {
      Session session;
      opening_.store(true);
      opened = serve(session);
      opening_.store(false);
    }
    attempts_.fetch_add(1);
    if (stop_.load()) break;
    if (opened) backoff = 0.1;
    if (connection_version_.load() != version) continue;  // reconnect now
    if (!opened) counters_.connect_failures.fetch_add(1);
    const auto until = Clock::now() + std::chrono::duration<double>(backoff * jitter(rng));
    while (!stop_.load() && Clock::now() < until && connection_version_.load() == version) {
      discard_input();
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    discard_input();
    backoff = std::min(backoff * 2.0, settings_.backoff_max_s);
  }
}

bool Core::resolve_model(const Connection& connection, std::string& model) {
  // The server's default model is the first it lists (the session's sources come with SessionOpened).
  auto stub = v1::Separation::NewStub(make_channel(connection.address));
  grpc::ClientContext context;
  add_token(context, connection.token);
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  v1::ListModelsRequest request;
  v1::ListModelsResponse reply;
  if (!stub->ListModels(&context, request, &reply).ok()) return false;
  for (const v1::ModelInfo& info : reply.models()) {
    // An empty name is the server's default: the first model it lists.
    if (connection.model.empty() || info.name() == connection.model) {
      model = info.name();
      return true;
    }
  }
  if (connection.model.empty()) return false;
  model = connection.model;  // not listed: let the server say why it cannot open it
  return true;
}

bool Core::serve(Session& s) {
  const Connection connection = this->connection();
  const uint64_t version = connection_version_.load();
  std::string model;
  if (!resolve_model(connection, model)) {
    if (counters_.connect_failures.load() == 0)
      log_line("cannot reach a server at %s (or it lists no model); dry audio, retrying", connection.address.c_str());
    return false;
  }
  auto stub = v1::Separation::NewStub(make_channel(connection.address));
  add_token(s.context, connection.token);
  {
    std::lock_guard<std::mutex> lock(live_mutex_);
    if (stop_.load() || connection_version_.load() != version) return false;
    live_ = &s;
  }
  struct Unpublish {
    Core* core;
    ~Unpublish() {
      std::lock_guard<std::mutex> lock(core->live_mutex_);
      core->live_ = nullptr;
    }
  } unpublish{this};

  s.stream = stub->Stream(&s.context);
  v1::StreamRequest open;
  v1::OpenSession* o = open.mutable_open();
  o->set_model(model);
  o->set_sample_rate(static_cast<uint32_t>(std::lround(settings_.sample_rate)));
  o->set_channels(static_cast<uint32_t>(settings_.channels));
  o->set_client_name("stemserve.lv2");
  o->set_return_stems(true);  // the plugin mixes them itself (see core.hpp: Mixing)
  v1::StreamResponse reply;
  if (!s.stream->Write(open) || !s.stream->Read(&reply) || !reply.has_opened()) {
    s.context.TryCancel();
    const grpc::Status status = s.stream->Finish();
    if (counters_.connect_failures.load() == 0 || status.error_code() != grpc::StatusCode::UNAVAILABLE)
      log_line("no session on %s (model %s): %s", connection.address.c_str(), model.c_str(),
               status.error_message().c_str());
    return false;
  }
  const v1::SessionOpened& opened = reply.opened();
  const uint64_t L = opened.latency().total();
  fix_latency(L + margin_);
  const int64_t fixed = total_.load();
  const uint64_t total = fixed < 0 ? 0 : static_cast<uint64_t>(fixed);
  if (fixed < 0 || L > total) {
    counters_.latency_refusals.fetch_add(1);
    if (counters_.latency_refusals.load() == 1)
      log_line("LATENCY MISMATCH: the server's latency %llu exceeds the plugin's fixed latency %llu; "
               "dry audio (reload the plugin to take the new latency)",
               static_cast<unsigned long long>(L), static_cast<unsigned long long>(total));
    s.context.TryCancel();
    s.stream->Finish();
    return true;  // it did open: back off from the start, do not count a connect failure
  }
  if (opened.sources_size() > kMaxStems) {
    counters_.latency_refusals.fetch_add(1);
    log_line("model %s has %d sources; the plugin mixes at most %d: dry audio", model.c_str(), opened.sources_size(),
             kMaxStems);
    s.context.TryCancel();
    s.stream->Finish();
    return true;
  }
  s.sources.assign(opened.sources().begin(), opened.sources().end());
  s.latency = L;
  s.offset = total - L;
  // The session starts at the first input not yet sent (kept while it opened: an offline host's
  // audio must not be lost, and a re-open for new opening parameters loses nothing). A real-time
  // backlog older than the latency would come back too late to be played: it is dropped.
  if (!offline_.load() && in_ring_.write_pos() - read_pos_ > total) read_pos_ = in_ring_.write_pos();
  s.origin = read_pos_;
  bool ok = true;
  session_first_out_.store(s.origin + total, std::memory_order_release);
  opening_.store(false);
  counters_.sessions_opened.fetch_add(1);
  log_line("session %s open: model %s, server latency %llu; LATENCY %llu frames (margin %llu), sources %d",
           opened.session_id().c_str(), model.c_str(), static_cast<unsigned long long>(L),
           static_cast<unsigned long long>(total), static_cast<unsigned long long>(total - L),
           static_cast<int>(s.sources.size()));
  s.waiting_since_ns.store(now_ns());
  s.receiver = std::thread(&Core::receive, this, std::ref(s));

  const int channels = settings_.channels;
  std::vector<float> pcm;
  uint64_t seq = 0;
  const int64_t stall_ns = static_cast<int64_t>(settings_.stall_timeout_s * 1e9);
  while (ok && !stop_.load() && s.alive.load() && connection_version_.load() == version) {
    const uint64_t write_pos = in_ring_.write_pos();
    if (write_pos > read_pos_) {
      const uint32_t frames = static_cast<uint32_t>(std::min<uint64_t>(write_pos - read_pos_, kChunk));
      pcm.resize(static_cast<size_t>(frames) * channels);
      const uint64_t lost = in_ring_.read_interleaved(read_pos_, frames, pcm.data());
      if (lost) counters_.input_lost_frames.fetch_add(lost);
      v1::StreamRequest request;
      v1::AudioBlock* block = request.mutable_block();
      block->set_seq(seq++);
      block->set_position(read_pos_ - s.origin);
      block->set_frames(frames);
      block->set_pcm(pcm.data(), pcm.size() * sizeof(float));  // little-endian float32, interleaved
      if (s.sent.load() == s.received.load()) s.waiting_since_ns.store(now_ns());
      s.sent.fetch_add(1);
      ok = s.stream->Write(request);
      counters_.blocks_sent.fetch_add(1);
      read_pos_ += frames;
      continue;
    }
    if (s.sent.load() > s.received.load() && now_ns() - s.waiting_since_ns.load() > stall_ns) {
      log_line("no reply from the server for %.1f s; reconnecting", settings_.stall_timeout_s);
      break;
    }
    std::unique_lock<std::mutex> lock(wake_mutex_);
    input_ready_.wait_for(lock, std::chrono::milliseconds(1));
  }
  // Frames in flight will never come: they are gaps (dry), not underruns.
  session_first_out_.store(kNever, std::memory_order_release);
  s.alive.store(false);
  s.context.TryCancel();
  s.receiver.join();
  const grpc::Status status = s.stream->Finish();
  arrived_.notify_all();
  if (!stop_.load() && connection_version_.load() == version)
    log_line("stream lost (%s); dry audio, reconnecting", status.error_message().c_str());
  discard_input();
  return true;
}

// -- the receiver ------------------------------------------------------------------------------
void Core::receive(Session& s) {
  const int channels = settings_.channels;
  const size_t width = static_cast<size_t>(channels) * kMaxStems;
  std::vector<float> frames_out;  // per frame: every stem's channels (OutputRing's layout), zeros past the sources
  v1::StreamResponse reply;
  while (s.stream->Read(&reply)) {
    s.waiting_since_ns.store(now_ns());
    if (!reply.has_block()) continue;  // statuses (parameters applied, overloaded) need no action here
    s.received.fetch_add(1);
    counters_.blocks_received.fetch_add(1);
    const v1::StemBlock& block = reply.block();
    const uint64_t frames = block.frames();
    const size_t bytes = frames * channels * sizeof(float);
    bool whole = block.stems_size() == static_cast<int>(s.sources.size());
    for (int j = 0; whole && j < block.stems_size(); ++j)
      whole = block.stems(j).name() == s.sources[j] && block.stems(j).pcm().size() == bytes;
    if (!whole) {
      log_line("stem block %llu does not hold %zu stems of %llu frames; dropped",
               static_cast<unsigned long long>(block.seq()), s.sources.size(), static_cast<unsigned long long>(frames));
      continue;
    }
    const uint64_t position = block.position();
    const uint64_t head = std::min(frames, position < s.latency ? s.latency - position : 0);
    if (head == frames) continue;
    frames_out.assign((frames - head) * width, 0.0f);
    for (int k = 0; k < block.stems_size(); ++k) {
      const char* pcm = block.stems(k).pcm().data();  // little-endian float32, interleaved channels
      for (uint64_t i = head; i < frames; ++i)
        std::memcpy(&frames_out[(i - head) * width + static_cast<size_t>(k) * channels],
                    pcm + i * channels * sizeof(float), channels * sizeof(float));
    }
    const uint64_t late = out_ring_->write(s.origin + position + head + s.offset, static_cast<uint32_t>(frames - head),
                                           frames_out.data());
    if (late) counters_.late_frames.fetch_add(late);
    arrived_.notify_all();
  }
  s.alive.store(false);
}

}  // namespace stemserve
