#include "actors/cloud_front.hpp"

#include <set>

#include <fmt/format.h>

namespace ceco {

namespace {

struct cloud_front_state {
  hello_msg mine;
  greeted_nodes greeted;  // remote nodes whose hello was accepted
  static inline const char* name = "cloud_front";
};

using front_ptr = cloud_api::stateful_pointer<cloud_front_state>;

/// Only this process and nodes that passed the handshake are served.
caf::error refuse_stranger(front_ptr self) {
  return self->state.greeted.refuse_stranger(self->current_sender(), self->node(), "this node");
}

caf::error not_here(const char* actor, const char* key) {
  return make_error(ceco_errc::not_placed_here,
                    fmt::format("the {} runs on the edge ({} = \"edge\")", actor, key));
}

/// The cloud's hello: compared with the edge's, and the edge's node greeted.
caf::result<hello_msg> serve(front_ptr self, const context_manager_actor&, const cloud_placed&,
                             hello_msg& edge) {
  if (auto diff = compare_hello(edge, self->state.mine); !diff.empty())
    return make_error(ceco_errc::handshake_failed, "the cloud refuses this edge: " + diff);
  if (auto note = mixed_quantization_note(edge, self->state.mine); !note.empty())
    fmt::print(stderr, "ceco cloud: {}\n", note);
  self->state.greeted.add(self->current_sender());
  auto reply = self->state.mine;
  reply.secret.clear();
  return reply;
}

/// Every other request goes to the context manager (naive and generate
/// requests too: the session must be open, and stays alive while the cloud
/// layers compute the answer).
template <class Request>
caf::result<reply_t<Request>> serve(front_ptr self, const context_manager_actor& contexts,
                                    const cloud_placed&, Request& x) {
  if (auto err = refuse_stranger(self))
    return err;
  return self->delegate(contexts, std::move(x));
}

/// The cloud strategy's first request may open its own session (session 0,
/// docs/design.md §1): opened here, then the request goes on in it, and the
/// reply names it. A generation that cannot start closes what it opened.
caf::result<generate_reply> serve(front_ptr self, const context_manager_actor& contexts,
                                  const cloud_placed&, generate_request& x) {
  if (auto err = refuse_stranger(self))
    return err;
  if (x.session != 0)
    return self->delegate(contexts, std::move(x));
  auto rp = self->make_response_promise<generate_reply>();
  self->request(contexts, caf::infinite, open_session{x.sampling, {}})
    .then(
      [=](uint64_t id) mutable {
        auto req = x;
        req.session = id;
        self->request(contexts, caf::infinite, std::move(req))
          .then(
            [=](generate_reply& r) mutable {
              r.session = id;
              rp.deliver(std::move(r));
            },
            [=](caf::error& err) mutable {
              if (!is(err, ceco_errc::session_lost))
                self->request(contexts, caf::infinite, close_session{id})
                  .then([](session_summary&) {}, [](caf::error&) {});
              rp.deliver(std::move(err));
            });
      },
      [=](caf::error& err) mutable { rp.deliver(std::move(err)); });
  return rp;
}

caf::result<exit_decision> serve(front_ptr self, const context_manager_actor& contexts,
                                 const cloud_placed& placed, evaluate_request& x) {
  if (auto err = refuse_stranger(self))
    return err;
  if (!placed.evaluator)
    return not_here("exit evaluator", "placement.exit_evaluator");
  // Through the context manager, which refreshes the session.
  return self->delegate(contexts, std::move(x));
}

caf::result<int32_t> serve(front_ptr self, const context_manager_actor&, const cloud_placed& placed,
                           upload_states& x) {
  if (auto err = refuse_stranger(self))
    return err;
  if (!placed.uploader)
    return not_here("uploader", "placement.uploader");
  return self->delegate(placed.uploader, std::move(x));
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
  return behavior_of<cloud_api::behavior_type>(cloud_protocol{}, [=](auto rpc) {
    using request = typename decltype(rpc)::request;
    return [=](request& x) -> caf::result<reply_t<request>> {
      return serve(self, contexts, placed, x);
    };
  });
}

} // namespace

cloud_api spawn_cloud_front(caf::actor_system& sys, context_manager_actor contexts,
                            cloud_placed placed, hello_msg hello) {
  return sys.spawn(cloud_front_fn, std::move(contexts), std::move(placed), std::move(hello));
}

} // namespace ceco
