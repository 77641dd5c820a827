#include "actors/cloud_front.hpp"

#include <set>

#include <fmt/format.h>

namespace ceco {

namespace {

struct cloud_front_state {
  hello_msg mine;
  std::set<caf::node_id> greeted;  // remote nodes whose hello was accepted
  static inline const char* name = "cloud_front";
};

using front_ptr = cloud_api::stateful_pointer<cloud_front_state>;

/// Only this process and nodes that passed the handshake are served.
caf::error refuse_stranger(front_ptr self) {
  auto sender = self->current_sender();
  if (!sender || sender->node() == self->node() || self->state.greeted.count(sender->node()))
    return {};
  return make_error(ceco_errc::handshake_failed,
                    "send hello_msg first: this node has not passed the handshake");
}

caf::error not_here(const char* actor, const char* key) {
  return make_error(ceco_errc::not_placed_here,
                    fmt::format("the {} runs on the edge ({} = \"edge\")", actor, key));
}

cloud_api::behavior_type cloud_front_fn(front_ptr self, context_manager_actor contexts,
                                        cloud_placed placed, hello_msg mine) {
  self->state.mine = std::move(mine);
  // Anything outside the protocol gets an error reply; the front keeps serving.
  self->set_default_handler([](caf::scheduled_actor*, caf::message_view& x) -> caf::result<caf::message> {
    return make_error(ceco_errc::unknown_message,
                      fmt::format("the cloud front does not handle this message of {} element(s); "
                                  "see the protocol in actors/messages.hpp",
                                  x.content().size()));
  });
  return {
    [=](hello_msg& edge) -> caf::result<hello_msg> {
      if (auto diff = compare_hello(edge, self->state.mine); !diff.empty())
        return make_error(ceco_errc::handshake_failed, "the cloud refuses this edge: " + diff);
      if (auto note = mixed_quantization_note(edge, self->state.mine); !note.empty())
        fmt::print(stderr, "ceco cloud: {}\n", note);
      if (auto sender = self->current_sender())
        self->state.greeted.insert(sender->node());
      auto reply = self->state.mine;
      reply.secret.clear();
      return reply;
    },
    [=](open_atom a) -> caf::result<uint64_t> {
      if (auto err = refuse_stranger(self))
        return err;
      return self->delegate(contexts, a);
    },
    [=](upload_msg& m) -> caf::result<int32_t> {
      if (auto err = refuse_stranger(self))
        return err;
      return self->delegate(contexts, std::move(m));
    },
    [=](draft_upload& m) -> caf::result<verdict> {
      if (auto err = refuse_stranger(self))
        return err;
      return self->delegate(contexts, std::move(m));
    },
    [=](infer_request& r) -> caf::result<infer_reply> {
      if (auto err = refuse_stranger(self))
        return err;
      return self->delegate(contexts, r);
    },
    // Through the context manager: the session must be open, and stays
    // alive while the cloud layers compute the answer.
    [=](naive_request& r) -> caf::result<infer_reply> {
      if (auto err = refuse_stranger(self))
        return err;
      return self->delegate(contexts, std::move(r));
    },
    [=](generate_request& r) -> caf::result<generate_reply> {
      if (auto err = refuse_stranger(self))
        return err;
      return self->delegate(contexts, std::move(r));
    },
    [=](close_atom a, uint64_t id) -> caf::result<session_summary> {
      if (auto err = refuse_stranger(self))
        return err;
      return self->delegate(contexts, a, id);
    },
    [=](evaluate_atom a, uint64_t id, tensor_blob& b) -> caf::result<exit_decision> {
      if (auto err = refuse_stranger(self))
        return err;
      if (!placed.evaluator)
        return not_here("exit evaluator", "placement.exit_evaluator");
      // Through the context manager, which refreshes the session.
      return self->delegate(contexts, a, id, std::move(b));
    },
    [=](upload_atom a, uint64_t id, int32_t start, tensor_blob& b) -> caf::result<int32_t> {
      if (auto err = refuse_stranger(self))
        return err;
      if (!placed.uploader)
        return not_here("uploader", "placement.uploader");
      return self->delegate(placed.uploader, a, id, start, std::move(b));
    },
  };
}

} // namespace

cloud_api spawn_cloud_front(caf::actor_system& sys, context_manager_actor contexts,
                            cloud_placed placed, hello_msg hello) {
  return sys.spawn(cloud_front_fn, std::move(contexts), std::move(placed), std::move(hello));
}

} // namespace ceco
