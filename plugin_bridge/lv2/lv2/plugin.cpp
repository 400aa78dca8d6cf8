// The LV2 wrapper: ports, state and the host's calls, mapped onto stemserve::Core. Everything that
// streams, buffers or aligns is in core/; a CLAP or VST3 wrapper would be a file like this one.
//
// Port order (C = 2 for the stereo plugin, 1 for the mono one): C audio inputs, C audio outputs,
// then the controls in the order of Control below (ttl/stemserve.ttl lists the same indices).
#include <lv2/atom/atom.h>
#include <lv2/buf-size/buf-size.h>
#include <lv2/core/lv2.h>
#include <lv2/options/options.h>
#include <lv2/state/state.h>
#include <lv2/urid/urid.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "../core/core.hpp"

namespace {

constexpr const char* kStereoUri = "urn:stemserve:lv2:stereo";
constexpr const char* kMonoUri = "urn:stemserve:lv2:mono";
constexpr const char* kStateServer = "urn:stemserve:lv2:state#server";
constexpr const char* kStateModel = "urn:stemserve:lv2:state#model";
constexpr const char* kStateToken = "urn:stemserve:lv2:state#token";
constexpr const char* kStateLatency = "urn:stemserve:lv2:state#latency";
constexpr int kMaxTarget = 8;

enum Control : uint32_t {
  kTarget,
  kMix,
  kGain1,
  kGain4 = kGain1 + stemserve::kMaxGains - 1,
  kEnabled,
  kUnderrunSilence,
  kFreewheel,
  kLatency,
  kControlCount
};

struct Urids {
  LV2_URID server, model, token, latency, atom_string, atom_int, max_block, nominal_block;
};

struct Plugin {
  int channels = 2;
  const float* in[2] = {nullptr, nullptr};
  float* out[2] = {nullptr, nullptr};
  float* controls[kControlCount] = {};
  Urids urids{};
  stemserve::Connection saved;  // the plugin state, as the DAW session stores it
  std::unique_ptr<stemserve::Core> core;
};

const char* env(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? value : nullptr;
}

double env_number(const char* name, double fallback) {
  const char* value = env(name);
  return value != nullptr ? std::atof(value) : fallback;
}

// The saved state, with the environment's overrides (headless tests, scripted setups) on top.
stemserve::Connection effective(const stemserve::Connection& saved) {
  stemserve::Connection c = saved;
  if (const char* v = env("STEMSERVE_LV2_SERVER")) c.address = v;
  if (const char* v = env("STEMSERVE_LV2_MODEL")) c.model = v;
  if (const char* v = env("STEMSERVE_LV2_TOKEN")) c.token = v;
  return c;
}

LV2_Handle instantiate(const LV2_Descriptor* descriptor, double rate, const char*, const LV2_Feature* const* features) {
  LV2_URID_Map* map = nullptr;
  const LV2_Options_Option* options = nullptr;
  for (int i = 0; features != nullptr && features[i] != nullptr; ++i) {
    if (std::strcmp(features[i]->URI, LV2_URID__map) == 0) map = static_cast<LV2_URID_Map*>(features[i]->data);
    if (std::strcmp(features[i]->URI, LV2_OPTIONS__options) == 0)
      options = static_cast<const LV2_Options_Option*>(features[i]->data);
  }
  if (map == nullptr) return nullptr;  // required by the .ttl: state keys are URIDs
  auto plugin = std::make_unique<Plugin>();
  plugin->channels = std::strcmp(descriptor->URI, kMonoUri) == 0 ? 1 : 2;
  Urids& u = plugin->urids;
  u.server = map->map(map->handle, kStateServer);
  u.model = map->map(map->handle, kStateModel);
  u.token = map->map(map->handle, kStateToken);
  u.latency = map->map(map->handle, kStateLatency);
  u.atom_string = map->map(map->handle, LV2_ATOM__String);
  u.atom_int = map->map(map->handle, LV2_ATOM__Int);
  u.max_block = map->map(map->handle, LV2_BUF_SIZE__maxBlockLength);
  u.nominal_block = map->map(map->handle, LV2_BUF_SIZE__nominalBlockLength);

  stemserve::Settings settings;
  settings.sample_rate = rate;
  settings.channels = plugin->channels;
  for (int i = 0; options != nullptr && options[i].key != 0; ++i) {
    const LV2_Options_Option& o = options[i];
    if ((o.key == u.max_block || o.key == u.nominal_block) && o.type == u.atom_int && o.value != nullptr) {
      const int32_t block = *static_cast<const int32_t*>(o.value);
      if (block > 0 && (o.key == u.max_block || settings.host_block == 1024))
        settings.host_block = static_cast<uint32_t>(std::min(block, 8192));
    }
  }
  settings.margin_ms = env_number("STEMSERVE_LV2_MARGIN_MS", settings.margin_ms);
  settings.connect_wait_s = env_number("STEMSERVE_LV2_CONNECT_WAIT_S", settings.connect_wait_s);
  settings.provisional_latency = static_cast<uint32_t>(env_number("STEMSERVE_LV2_LATENCY", 0));
  plugin->core = std::make_unique<stemserve::Core>(settings, effective(plugin->saved));
  return plugin.release();
}

void connect_port(LV2_Handle handle, uint32_t port, void* data) {
  Plugin* p = static_cast<Plugin*>(handle);
  const uint32_t c = static_cast<uint32_t>(p->channels);
  if (port < c)
    p->in[port] = static_cast<const float*>(data);
  else if (port < 2 * c)
    p->out[port - c] = static_cast<float*>(data);
  else if (port - 2 * c < kControlCount)
    p->controls[port - 2 * c] = static_cast<float*>(data);
}

float value(const Plugin* p, uint32_t control, float fallback) {
  const float* port = p->controls[control];
  return port != nullptr && std::isfinite(*port) ? *port : fallback;
}

stemserve::Controls read_controls(const Plugin* p) {
  stemserve::Controls c;
  const long target = std::lround(value(p, kTarget, 1.0f));
  c.target = static_cast<int>(std::min<long>(kMaxTarget, std::max<long>(0, target)));
  c.mix = value(p, kMix, 1.0f);
  for (int i = 0; i < stemserve::kMaxGains; ++i) c.gains[i] = value(p, kGain1 + i, 1.0f);
  c.enabled = value(p, kEnabled, 1.0f) > 0.5f;
  c.silence_on_underrun = value(p, kUnderrunSilence, 0.0f) > 0.5f;
  return c;
}

void activate(LV2_Handle handle) {
  // The latency is fixed here, once per instance (a host activates from its non-real-time thread).
  Plugin* p = static_cast<Plugin*>(handle);
  p->core->activate();
}

void run(LV2_Handle handle, uint32_t frames) {
  Plugin* p = static_cast<Plugin*>(handle);
  const stemserve::Controls c = read_controls(p);
  const bool offline = value(p, kFreewheel, 0.0f) > 0.5f;
  bool connected = true;
  for (int ch = 0; ch < p->channels; ++ch) connected = connected && p->in[ch] != nullptr && p->out[ch] != nullptr;
  if (connected) p->core->process(p->in, p->out, frames, c, offline);
  if (p->controls[kLatency] != nullptr) *p->controls[kLatency] = static_cast<float>(p->core->latency());
}

void cleanup(LV2_Handle handle) { delete static_cast<Plugin*>(handle); }

LV2_State_Status save(LV2_Handle handle, LV2_State_Store_Function store, LV2_State_Handle state, uint32_t,
                      const LV2_Feature* const*) {
  Plugin* p = static_cast<Plugin*>(handle);
  const Urids& u = p->urids;
  const uint32_t flags = LV2_STATE_IS_POD | LV2_STATE_IS_PORTABLE;
  store(state, u.server, p->saved.address.c_str(), p->saved.address.size() + 1, u.atom_string, flags);
  store(state, u.model, p->saved.model.c_str(), p->saved.model.size() + 1, u.atom_string, flags);
  store(state, u.token, p->saved.token.c_str(), p->saved.token.size() + 1, u.atom_string, flags);
  // The fixed latency, so that a session reopened while the server is down keeps its alignment.
  const int32_t latency = static_cast<int32_t>(p->core->latency());
  if (latency > 0) store(state, u.latency, &latency, sizeof latency, u.atom_int, flags);
  return LV2_STATE_SUCCESS;
}

LV2_State_Status restore(LV2_Handle handle, LV2_State_Retrieve_Function retrieve, LV2_State_Handle state, uint32_t,
                         const LV2_Feature* const*) {
  Plugin* p = static_cast<Plugin*>(handle);
  const Urids& u = p->urids;
  auto text = [&](LV2_URID key, std::string& into) {
    size_t size = 0;
    uint32_t type = 0, flags = 0;
    const void* data = retrieve(state, key, &size, &type, &flags);
    if (data != nullptr && type == u.atom_string && size > 0)
      into.assign(static_cast<const char*>(data), strnlen(static_cast<const char*>(data), size));
  };
  stemserve::Connection restored = p->saved;
  text(u.server, restored.address);
  text(u.model, restored.model);
  text(u.token, restored.token);
  if (restored.address.empty()) restored.address = stemserve::Connection{}.address;
  p->saved = restored;
  size_t size = 0;
  uint32_t type = 0, flags = 0;
  const void* latency = retrieve(state, u.latency, &size, &type, &flags);
  if (latency != nullptr && type == u.atom_int && size == sizeof(int32_t))
    p->core->set_provisional_latency(static_cast<uint32_t>(*static_cast<const int32_t*>(latency)));
  p->core->set_connection(effective(p->saved));
  return LV2_STATE_SUCCESS;
}

const void* extension_data(const char* uri) {
  static const LV2_State_Interface state = {save, restore};
  return std::strcmp(uri, LV2_STATE__interface) == 0 ? &state : nullptr;
}

const LV2_Descriptor kDescriptors[] = {
    {kStereoUri, instantiate, connect_port, activate, run, nullptr, cleanup, extension_data},
    {kMonoUri, instantiate, connect_port, activate, run, nullptr, cleanup, extension_data},
};

}  // namespace

extern "C" LV2_SYMBOL_EXPORT const LV2_Descriptor* lv2_descriptor(uint32_t index) {
  return index < 2 ? &kDescriptors[index] : nullptr;
}
