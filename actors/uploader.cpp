#include "actors/uploader.hpp"

#include <vector>

#include "actors/hidden_rows.hpp"

namespace ceco {

namespace {

struct uploader_state {
  upload_sink cloud;
  wire_dtype dtype = wire_dtype::f16;
  std::chrono::milliseconds timeout{30'000};
  std::vector<float> rows;  // conversion buffer, reused
  static inline const char* name = "uploader";
};

uploader_actor::behavior_type uploader_fn(uploader_actor::stateful_pointer<uploader_state> self,
                                          upload_sink cloud, wire_dtype dtype,
                                          std::chrono::milliseconds timeout) {
  self->state.cloud = std::move(cloud);
  self->state.dtype = dtype;
  self->state.timeout = timeout;
  return {
    [=](upload_states& up) -> caf::result<int32_t> {
      auto& st = self->state;
      if (auto bad = up.states.check(0); !bad.empty())
        return make_error(ceco_errc::bad_tensor, "upload: " + bad);
      // Rows in another dtype than this uploader's are converted here: those
      // an uploader placed on the cloud gets (f32). The edge layers write the
      // rows of an uploader on the edge in its dtype, so they pass as they are.
      upload_msg msg{up.session, up.start, transcode(std::move(up.states), st.dtype, st.rows)};
      auto rp = self->make_response_promise<int32_t>();
      self->request(st.cloud, st.timeout, std::move(msg))
        .then([=](int32_t held) mutable { rp.deliver(held); },
              [=](caf::error& err) mutable { rp.deliver(err); });
      return rp;
    },
    [=](draft_upload& msg) -> caf::result<verdict> {
      auto& st = self->state;
      if (auto bad = msg.states.check(0); !bad.empty())
        return make_error(ceco_errc::bad_tensor, "draft upload: " + bad);
      msg.states = transcode(std::move(msg.states), st.dtype, st.rows);
      auto rp = self->make_response_promise<verdict>();
      self->request(st.cloud, st.timeout, std::move(msg))
        .then([=](verdict& v) mutable { rp.deliver(v); },
              [=](caf::error& err) mutable { rp.deliver(err); });
      return rp;
    },
  };
}

uploader_actor::behavior_type remote_uploader_fn(uploader_actor::pointer self, cloud_api cloud) {
  return {
    [=](upload_states& up) -> caf::result<int32_t> {
      return self->delegate(cloud, std::move(up));
    },
    [=](draft_upload&) -> caf::result<verdict> {
      return make_error(ceco_errc::not_placed_here,
                        "speculative and exact responses draft on the edge: they need "
                        "placement.uploader = \"edge\"");
    },
  };
}

} // namespace

uploader_actor spawn_uploader(caf::actor_system& sys, upload_sink cloud, wire_dtype dtype,
                              std::chrono::milliseconds timeout) {
  return sys.spawn(uploader_fn, std::move(cloud), dtype, timeout);
}

uploader_actor spawn_remote_uploader(caf::actor_system& sys, cloud_api cloud) {
  return sys.spawn(remote_uploader_fn, std::move(cloud));
}

} // namespace ceco
