// Preallocated single-producer / single-consumer rings between the audio thread and the network
// threads, the C++ twin of plugin_bridge/ring.py. Positions are host frame indices (frame 0 is the
// first frame the host gave the plugin); capacities are powers of two so a position maps to a slot
// with a mask. Nothing here allocates, locks or calls the system after construction.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

namespace stemserve {

inline uint64_t pow2_at_least(uint64_t n) {
  uint64_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

// Host input: the audio thread writes every frame; the sender reads frames to send, and the audio
// thread reads its own past (the latency-aligned dry signal).
class InputRing {
 public:
  InputRing(int channels, uint64_t capacity)
      : channels_(channels), mask_(capacity - 1), data_(channels * capacity, 0.0f) {}

  // Audio thread: append `n` frames (channel pointers), then publish them.
  void write(const float* const* in, uint32_t n) {
    const uint64_t w = write_pos_.load(std::memory_order_relaxed);
    for (int c = 0; c < channels_; ++c) {
      float* dst = &data_[static_cast<size_t>(c) * (mask_ + 1)];
      for (uint32_t i = 0; i < n; ++i) dst[(w + i) & mask_] = in[c][i];
    }
    write_pos_.store(w + n, std::memory_order_release);
  }

  // Audio thread: frames [pos, pos + n) of its own past input into `out` (zeros before frame 0).
  void history(int64_t pos, uint32_t n, int c, float* out) const {
    const float* src = &data_[static_cast<size_t>(c) * (mask_ + 1)];
    for (uint32_t i = 0; i < n; ++i) {
      const int64_t p = pos + static_cast<int64_t>(i);
      out[i] = p < 0 ? 0.0f : src[static_cast<uint64_t>(p) & mask_];
    }
  }

  // Sender: copy frames [start, start + n) interleaved into `out`; returns how many of them were
  // already overwritten (the sender fell more than a capacity behind; they are sent as read).
  uint64_t read_interleaved(uint64_t start, uint32_t n, float* out) const {
    for (uint32_t i = 0; i < n; ++i)
      for (int c = 0; c < channels_; ++c)
        out[static_cast<size_t>(i) * channels_ + c] = data_[static_cast<size_t>(c) * (mask_ + 1) + ((start + i) & mask_)];
    const uint64_t w = write_pos_.load(std::memory_order_acquire);
    const uint64_t oldest = w > mask_ + 1 ? w - (mask_ + 1) : 0;
    return start >= oldest ? 0 : std::min<uint64_t>(n, oldest - start);
  }

  uint64_t write_pos() const { return write_pos_.load(std::memory_order_acquire); }
  int channels() const { return channels_; }

 private:
  int channels_;
  uint64_t mask_;
  std::vector<float> data_;
  std::atomic<uint64_t> write_pos_{0};
};

// Stem output, placed at host output positions: `width` floats per frame (every stem's channels:
// stem k, channel c at k * channels + c). Each slot carries the position of the frame it holds
// (its stamp), written after the samples, so the audio thread knows per frame whether the stems
// arrived; a frame's slot is reused only a capacity later.
class OutputRing {
 public:
  OutputRing(int width, uint64_t capacity)
      : width_(width), mask_(capacity - 1), data_(static_cast<size_t>(width) * capacity, 0.0f), stamps_(capacity) {
    for (auto& s : stamps_) s.store(kEmpty, std::memory_order_relaxed);
  }

  // Receiver: `n` frames of `width` floats each for host output positions [pos, pos + n). Frames
  // the audio thread already played (before read_pos) are dropped: returns how many were.
  uint64_t write(uint64_t pos, uint32_t n, const float* frames) {
    const uint64_t played = read_pos_.load(std::memory_order_acquire);
    uint64_t late = 0;
    for (uint32_t i = 0; i < n; ++i) {
      const uint64_t p = pos + i;
      if (p < played) {
        ++late;
        continue;
      }
      if (p >= played + mask_ + 1) break;  // too far ahead to hold (cannot happen: sized for the latency)
      const uint64_t slot = p & mask_;
      stamps_[slot].store(kEmpty, std::memory_order_relaxed);
      std::atomic_thread_fence(std::memory_order_release);
      std::copy(frames + static_cast<size_t>(i) * width_, frames + static_cast<size_t>(i + 1) * width_,
                &data_[slot * width_]);
      stamps_[slot].store(p, std::memory_order_release);
    }
    return late;
  }

  // Audio thread: whether frame `p` arrived; if so its `width` floats start at frame(p).
  bool ready(uint64_t p) const { return stamps_[p & mask_].load(std::memory_order_acquire) == p; }
  const float* frame(uint64_t p) const { return &data_[(p & mask_) * width_]; }

  // Frames in [pos, pos + n) that arrived (offline waits).
  uint64_t count_ready(uint64_t pos, uint64_t n) const {
    uint64_t k = 0;
    for (uint64_t i = 0; i < n; ++i) k += ready(pos + i) ? 1 : 0;
    return k;
  }

  // Audio thread: frames before `pos` are played; later arrivals for them are late.
  void set_read_pos(uint64_t pos) { read_pos_.store(pos, std::memory_order_release); }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  size_t width_;
  uint64_t mask_;
  std::vector<float> data_;
  std::vector<std::atomic<uint64_t>> stamps_;
  std::atomic<uint64_t> read_pos_{0};
};

}  // namespace stemserve
