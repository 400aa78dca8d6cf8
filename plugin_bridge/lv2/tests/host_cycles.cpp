// A minimal LV2 host for lifetime checks (tests/plugin_bridge/test_lv2.py builds it with
// -fsanitize=address, so every free in the process, the plugin's included, is checked).
// Usage: host_cycles PLUGIN.so CYCLES INSTANCES
// Each of INSTANCES threads runs CYCLES times: instantiate, state save + restore, activate, run
// 20..79 blocks (512 or 1024 frames; freewheel and the target switched every few blocks; state
// saved and restored while the network threads run), on odd cycles a second activate and one more
// block, cleanup. The plugin's network threads start and stop with each instance.
#include <dlfcn.h>
#include <lv2/core/lv2.h>
#include <lv2/state/state.h>
#include <lv2/urid/urid.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

static std::mutex urid_mutex;
static std::map<std::string, LV2_URID> urids;
static LV2_URID map_uri(LV2_URID_Map_Handle, const char* uri) {
  std::lock_guard<std::mutex> lock(urid_mutex);
  auto it = urids.find(uri);
  if (it != urids.end()) return it->second;
  const LV2_URID id = static_cast<LV2_URID>(urids.size() + 1);
  urids[uri] = id;
  return id;
}
struct Stored { std::map<uint32_t, std::string> values; std::map<uint32_t, uint32_t> types; };
static LV2_State_Status store(LV2_State_Handle h, uint32_t key, const void* v, size_t n, uint32_t type, uint32_t) {
  auto* s = static_cast<Stored*>(h);
  s->values[key] = std::string(static_cast<const char*>(v), n);
  s->types[key] = type;
  return LV2_STATE_SUCCESS;
}
static const void* retrieve(LV2_State_Handle h, uint32_t key, size_t* n, uint32_t* type, uint32_t* flags) {
  auto* s = static_cast<Stored*>(h);
  auto it = s->values.find(key);
  if (it == s->values.end()) return nullptr;
  *n = it->second.size(); *type = s->types[key]; *flags = 0;
  return it->second.data();
}

int main(int argc, char** argv) {
  if (argc < 4) { std::fprintf(stderr, "usage: cycles PLUGIN.so CYCLES INSTANCES\n"); return 2; }
  void* lib = dlopen(argv[1], RTLD_NOW);
  if (!lib) { std::fprintf(stderr, "%s\n", dlerror()); return 2; }
  auto get = reinterpret_cast<const LV2_Descriptor* (*)(uint32_t)>(dlsym(lib, "lv2_descriptor"));
  const LV2_Descriptor* d = get(0);
  const int cycles = std::atoi(argv[2]), instances = std::atoi(argv[3]);
  LV2_URID_Map map{nullptr, map_uri};
  LV2_Feature map_feature{LV2_URID__map, &map};
  const LV2_Feature* features[] = {&map_feature, nullptr};
  auto worker = [&](int w) {
    for (int c = 0; c < cycles; ++c) {
      LV2_Handle h = d->instantiate(d, 48000.0, "", features);
      if (!h) { std::fprintf(stderr, "instantiate failed\n"); std::exit(1); }
      const uint32_t n = 1024;
      std::vector<float> in(2 * n, 0.25f), out(2 * n);
      float controls[10] = {1, 1, 1, 1, 1, 1, 1, 0, 0, 0};
      d->connect_port(h, 0, in.data()); d->connect_port(h, 1, in.data() + n);
      d->connect_port(h, 2, out.data()); d->connect_port(h, 3, out.data() + n);
      for (uint32_t p = 0; p < 10; ++p) d->connect_port(h, 4 + p, &controls[p]);
      const auto* state = static_cast<const LV2_State_Interface*>(d->extension_data(LV2_STATE__interface));
      Stored saved;
      state->save(h, store, &saved, 0, nullptr);
      state->restore(h, retrieve, &saved, 0, nullptr);
      d->activate(h);
      const int blocks = 20 + (c * 7 + w * 13) % 60;
      for (int b = 0; b < blocks; ++b) {
        controls[8] = (b / 10 + c) % 2 ? 1.0f : 0.0f;  // freewheel on and off
        controls[0] = static_cast<float>(1 + (b / 5) % 2);  // target changes
        d->run(h, b % 3 == 0 ? n : n / 2);
        if (b % 17 == 5) { state->save(h, store, &saved, 0, nullptr); state->restore(h, retrieve, &saved, 0, nullptr); }
        if (controls[8] < 0.5f) std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
      if (c % 2) { d->activate(h); d->run(h, n); }  // a second activate, as hosts do around export
      d->cleanup(h);
    }
  };
  std::vector<std::thread> threads;
  for (int w = 0; w < instances; ++w) threads.emplace_back(worker, w);
  for (auto& t : threads) t.join();
  std::printf("CYCLES DONE %d x %d\n", cycles, instances);
  return 0;
}
