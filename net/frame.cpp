#include "net/frame.hpp"

#include <cmath>
#include <cstring>
#include <limits>
#include <streambuf>

#include <cereal/archives/binary.hpp>
#include <fmt/format.h>

namespace ceco::wire {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "cereal's binary archive writes host order; the wire is little-endian");

namespace {

/// Thrown inside the codec only; encode and decode turn it into a wire_error.
struct refusal {
  wire_error error;
};

[[noreturn]] void refuse(wire_errc code, std::string text) { throw refusal{{code, std::move(text)}}; }

/// Reads a payload in place.
struct span_buf : std::streambuf {
  span_buf(const uint8_t* data, size_t size) {
    auto* p = reinterpret_cast<char*>(const_cast<uint8_t*>(data));
    setg(p, p, p + size);
  }
  size_t left() const { return size_t(egptr() - gptr()); }
};

/// Appends to a byte vector.
struct vector_buf : std::streambuf {
  explicit vector_buf(std::vector<uint8_t>& out) : out(out) {}
  std::streamsize xsputn(const char* s, std::streamsize n) override {
    out.insert(out.end(), reinterpret_cast<const uint8_t*>(s),
               reinterpret_cast<const uint8_t*>(s) + n);
    return n;
  }
  int_type overflow(int_type c) override {
    if (c != traits_type::eof())
      out.push_back(uint8_t(c));
    return c;
  }
  std::vector<uint8_t>& out;
};

// -- the three visitors of a message's fields ----------------------------------
// Each message lists its fields once (fields() below) with their bounds; the
// writer writes them, the reader reads and checks them, the sizer adds up the
// largest legal payload.

struct writer {
  static constexpr bool largest = false;
  cereal::BinaryOutputArchive& ar;
  const wire_limits& lim;
  const char* msg = "";

  template <class T>
  void scalar(const char*, T v) { ar(v); }
  void u64(const char* f, uint64_t& v) { scalar(f, v); }
  void u32(const char* f, uint32_t& v) { scalar(f, v); }
  void u8(const char* f, uint8_t& v, int, int) { scalar(f, v); }
  void i32(const char* f, int32_t& v, int64_t, int64_t) { scalar(f, v); }
  void i64(const char* f, int64_t& v, int64_t, int64_t) { scalar(f, v); }
  void f32(const char* f, float& v, double, double) { scalar(f, v); }
  void boolean(const char* f, bool& v) { scalar(f, uint8_t(v ? 1 : 0)); }
  template <size_t N>
  void bytes(const char*, std::array<uint8_t, N>& a) { ar(cereal::binary_data(a.data(), N)); }
  template <class T>
  void vec(const char* f, std::vector<T>& v, int64_t, int64_t, double, double) {
    count(f, v.size());
    ar(cereal::binary_data(v.data(), v.size() * sizeof(T)));
  }
  void text(const char* f, std::string& s, int64_t) {
    count(f, s.size());
    ar(cereal::binary_data(s.data(), s.size()));
  }
  void blob(const char* f, tensor_blob& b, int64_t, int64_t, int32_t) {
    size_t expected = size_t(std::max(b.rows, 0)) * size_t(std::max(b.cols, 0)) * element_size(b.dtype);
    if (b.rows < 0 || b.cols < 0 || b.bytes.size() != expected)
      refuse(wire_errc::bad_field,
             fmt::format("{}.{}: a {}x{} tensor of dtype {} needs {} bytes, has {}", msg, f,
                         b.rows, b.cols, int(b.dtype), expected, b.bytes.size()));
    ar(b.dtype, b.rows, b.cols);
    ar(cereal::binary_data(b.bytes.data(), b.bytes.size()));
  }
  void count(const char* f, size_t n) {
    if (n > std::numeric_limits<uint32_t>::max())
      refuse(wire_errc::too_large, fmt::format("{}.{}: {} elements do not fit a frame", msg, f, n));
    ar(uint32_t(n));
  }
};

struct reader {
  static constexpr bool largest = false;
  span_buf& buf;
  cereal::BinaryInputArchive& ar;
  const wire_limits& lim;
  const char* msg = "";

  void need(const char* f, uint64_t n) {
    if (buf.left() < n)
      refuse(wire_errc::truncated, fmt::format("{}.{}: the payload ends inside it (needs {} "
                                               "bytes, {} left)", msg, f, n, buf.left()));
  }
  template <class T>
  void scalar(const char* f, T& v) {
    need(f, sizeof(T));
    ar(v);
  }
  template <class T>
  void in_range(const char* f, T v, int64_t lo, int64_t hi) {
    if (int64_t(v) < lo || int64_t(v) > hi)
      refuse(wire_errc::bad_field,
             fmt::format("{}.{}: expected {}..{}, got {}", msg, f, lo, hi, v));
  }
  void u64(const char* f, uint64_t& v) { scalar(f, v); }
  void u32(const char* f, uint32_t& v) { scalar(f, v); }
  void u8(const char* f, uint8_t& v, int lo, int hi) { scalar(f, v); in_range(f, v, lo, hi); }
  void i32(const char* f, int32_t& v, int64_t lo, int64_t hi) { scalar(f, v); in_range(f, v, lo, hi); }
  void i64(const char* f, int64_t& v, int64_t lo, int64_t hi) { scalar(f, v); in_range(f, v, lo, hi); }
  void f32(const char* f, float& v, double lo, double hi) {
    scalar(f, v);
    if (!std::isfinite(v) || v < lo || v > hi)
      refuse(wire_errc::bad_field,
             fmt::format("{}.{}: expected a finite number in [{}, {}], got {}", msg, f, lo, hi, v));
  }
  void boolean(const char* f, bool& v) {
    uint8_t b = 0;
    u8(f, b, 0, 1);
    v = b == 1;
  }
  template <size_t N>
  void bytes(const char* f, std::array<uint8_t, N>& a) {
    need(f, N);
    ar(cereal::binary_data(a.data(), N));
  }
  /// A count, checked against its bounds and the bytes left before anything is allocated.
  size_t count(const char* f, int64_t lo, int64_t hi, size_t element) {
    uint32_t n = 0;
    scalar(f, n);
    if (int64_t(n) < lo || int64_t(n) > hi)
      refuse(wire_errc::bad_field,
             fmt::format("{}.{}: expected {}..{} elements, got {}", msg, f, lo, hi, n));
    need(f, uint64_t(n) * element);
    return n;
  }
  template <class T>
  void vec(const char* f, std::vector<T>& v, int64_t lo, int64_t hi, double min, double max) {
    size_t n = count(f, lo, hi, sizeof(T));
    v.resize(n);
    ar(cereal::binary_data(v.data(), n * sizeof(T)));
    for (size_t i = 0; i < n; ++i) {
      bool good = std::is_floating_point_v<T> ? std::isfinite(double(v[i])) && v[i] >= min && v[i] <= max
                                              : double(v[i]) >= min && double(v[i]) <= max;
      if (!good)
        refuse(wire_errc::bad_field, fmt::format("{}.{}[{}]: expected {}..{}, got {}", msg, f, i,
                                                 min, max, v[i]));
    }
  }
  void text(const char* f, std::string& s, int64_t max) {
    size_t n = count(f, 0, max, 1);
    s.resize(n);
    ar(cereal::binary_data(s.data(), n));
  }
  void blob(const char* f, tensor_blob& b, int64_t min_rows, int64_t max_rows, int32_t cols) {
    std::string field = std::string(f);
    u8((field + ".dtype").c_str(), b.dtype, 0, 1);
    i32((field + ".rows").c_str(), b.rows, min_rows, max_rows);
    i32((field + ".cols").c_str(), b.cols, cols, cols);
    uint64_t n = uint64_t(b.rows) * uint64_t(b.cols) * element_size(b.dtype);
    need((field + ".bytes").c_str(), n);
    b.bytes.resize(n);
    ar(cereal::binary_data(b.bytes.data(), n));
  }
};

/// Adds up the largest payload the bounds allow: the fixed-size fields as the
/// counter counts them, every count at its bound.
struct sizer : detail::size_counter {
  static constexpr bool largest = true;
  explicit sizer(const wire_limits& limits) : lim(limits) {}
  const wire_limits& lim;  // the bounds (hides the counter's)

  template <class T>
  void vec(const char*, std::vector<T>&, int64_t, int64_t hi, double, double) {
    total += 4 + uint64_t(std::max<int64_t>(hi, 0)) * sizeof(T);
  }
  void text(const char*, std::string&, int64_t max) { total += 4 + uint64_t(max); }
  void blob(const char*, tensor_blob&, int64_t, int64_t max_rows, int32_t cols) {
    total += 9 + uint64_t(std::max<int64_t>(max_rows, 0)) * uint64_t(std::max(cols, 0)) * 4;
  }
};

/// A default-constructed alternative of `message` for a type index.
template <size_t I = 0>
message make_message(size_t index) {
  if constexpr (I < std::variant_size_v<message>) {
    if (index == I)
      return message(std::in_place_index<I>);
    return make_message<I + 1>(index);
  } else {
    return message{};
  }
}

void store_u16(uint8_t* p, uint16_t v) { p[0] = uint8_t(v); p[1] = uint8_t(v >> 8); }
void store_u32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i)
    p[i] = uint8_t(v >> (8 * i));
}
uint16_t load_u16(const uint8_t* p) { return uint16_t(p[0] | (p[1] << 8)); }
uint32_t load_u32(const uint8_t* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}

uint64_t frame_cap(frame_type type, const wire_limits& limits) {
  uint64_t cap = max_payload_of(type, limits);
  return limits.max_payload ? std::min<uint64_t>(cap, limits.max_payload) : cap;
}

} // namespace

const char* to_string(frame_type t) {
  static const char* names[] = {"auth_challenge", "auth_response", "auth_ok", "hello",
                                "hello_reply", "open_session", "open_reply", "upload",
                                "positions_reply", "infer_request", "infer_reply",
                                "naive_request", "generate_request", "generate_reply",
                                "close_session", "session_summary", "evaluate_request",
                                "exit_decision", "upload_states", "ping", "pong", "error",
                                "draft_upload", "verdict"};
  static_assert(sizeof(names) / sizeof(names[0]) == frame_type_count);
  auto i = size_t(t);
  return i >= 1 && i <= frame_type_count ? names[i - 1] : "unknown";
}

bool is_request(frame_type t) {
  switch (t) {
    case frame_type::hello:
    case frame_type::open_session:
    case frame_type::upload:
    case frame_type::infer_request:
    case frame_type::naive_request:
    case frame_type::generate_request:
    case frame_type::close_session:
    case frame_type::evaluate_request:
    case frame_type::upload_states:
    case frame_type::draft_upload:
    case frame_type::ping:
      return true;
    default:
      return false;
  }
}

wire_limits wire_limits::for_model(int32_t width, int32_t context, int32_t vocab, int32_t layers) {
  wire_limits l;
  l.width = width;
  l.context = context;
  l.vocab = vocab;
  l.layers = layers;
  uint64_t largest = 0;
  for (uint16_t t = 1; t <= frame_type_count; ++t)
    largest = std::max(largest, max_payload_of(frame_type(t), l));
  l.max_payload = uint32_t(std::min<uint64_t>(largest, std::numeric_limits<uint32_t>::max()));
  return l;
}

uint64_t max_payload_of(frame_type type, const wire_limits& limits) {
  auto index = size_t(type);
  if (index < 1 || index > frame_type_count)
    return 0;
  message m = make_message(index - 1);
  sizer s(limits);
  std::visit([&](auto& x) { fields(s, x); }, m);
  return s.total;
}

uint64_t encoded_size(const message& msg) {
  return std::visit([](const auto& x) { return encoded_size(x); }, msg);
}

result<std::vector<uint8_t>> encode(uint32_t request_id, const message& msg,
                                    const wire_limits& limits) {
  std::vector<uint8_t> out(header_size);
  try {
    vector_buf buf(out);
    std::ostream os(&buf);
    {
      cereal::BinaryOutputArchive ar(os);
      writer w{ar, limits, to_string(type_of(msg))};
      std::visit([&](auto& x) { fields(w, const_cast<std::decay_t<decltype(x)>&>(x)); }, msg);
    }
    size_t payload = out.size() - header_size;
    if (payload > std::numeric_limits<uint32_t>::max() ||
        (limits.max_payload && payload > limits.max_payload))
      return wire_error{wire_errc::too_large,
                        fmt::format("{}: a {}-byte payload is over the frame cap of {} bytes",
                                    to_string(type_of(msg)), payload,
                                    limits.max_payload ? limits.max_payload : 0xFFFFFFFFu)};
    store_u32(out.data(), frame_magic);
    store_u16(out.data() + 4, wire_version);
    store_u16(out.data() + 6, uint16_t(type_of(msg)));
    store_u32(out.data() + 8, request_id);
    store_u32(out.data() + 12, uint32_t(payload));
    return out;
  } catch (const refusal& r) {
    return r.error;
  } catch (const std::exception& e) {
    return wire_error{wire_errc::bad_field, fmt::format("{}: {}", to_string(type_of(msg)), e.what())};
  }
}

result<frame_header> parse_header(const uint8_t* bytes, const wire_limits& limits) {
  uint32_t magic = load_u32(bytes);
  if (magic != frame_magic)
    return wire_error{wire_errc::bad_header,
                      fmt::format("frame magic: expected 0x{:08x} (\"CECO\"), got 0x{:08x}",
                                  frame_magic, magic)};
  uint16_t version = load_u16(bytes + 4);
  if (version != wire_version)
    return wire_error{wire_errc::bad_header,
                      fmt::format("frame version: expected {}, got {}", wire_version, version)};
  uint16_t type = load_u16(bytes + 6);
  if (type < 1 || type > frame_type_count)
    return wire_error{wire_errc::bad_header,
                      fmt::format("frame type: expected 1..{}, got {}", frame_type_count, type)};
  frame_header h{frame_type(type), load_u32(bytes + 8), load_u32(bytes + 12)};
  uint64_t cap = frame_cap(h.type, limits);
  if (h.payload_size > cap)
    return wire_error{wire_errc::too_large,
                      fmt::format("{} frame: payload size expected at most {} bytes, got {}",
                                  to_string(h.type), cap, h.payload_size)};
  return h;
}

result<message> decode_payload(frame_type type, const uint8_t* payload, size_t size,
                               const wire_limits& limits) {
  auto index = size_t(type);
  if (index < 1 || index > frame_type_count)
    return wire_error{wire_errc::bad_header, fmt::format("frame type: expected 1..{}, got {}",
                                                         frame_type_count, index)};
  try {
    message m = make_message(index - 1);
    span_buf buf(payload, size);
    std::istream is(&buf);
    cereal::BinaryInputArchive ar(is);
    reader r{buf, ar, limits, to_string(type)};
    std::visit([&](auto& x) { fields(r, x); }, m);
    if (buf.left() != 0)
      return wire_error{wire_errc::trailing_bytes,
                        fmt::format("{} frame: {} bytes after the last field", to_string(type),
                                    buf.left())};
    return m;
  } catch (const refusal& r) {
    return r.error;
  } catch (const std::exception& e) {  // cereal's short reads, allocation failures
    return wire_error{wire_errc::bad_field, fmt::format("{} frame: {}", to_string(type), e.what())};
  }
}

result<frame> decode(const uint8_t* bytes, size_t size, const wire_limits& limits) {
  if (size < header_size)
    return wire_error{wire_errc::truncated,
                      fmt::format("frame header: expected {} bytes, got {}", header_size, size)};
  auto h = parse_header(bytes, limits);
  if (!ok(h))
    return std::get<wire_error>(h);
  auto& header = std::get<frame_header>(h);
  if (size - header_size != header.payload_size)
    return wire_error{size - header_size < header.payload_size ? wire_errc::truncated
                                                               : wire_errc::trailing_bytes,
                      fmt::format("{} frame: payload size {} in the header, {} bytes follow",
                                  to_string(header.type), header.payload_size, size - header_size)};
  auto m = decode_payload(header.type, bytes + header_size, header.payload_size, limits);
  if (!ok(m))
    return std::get<wire_error>(m);
  return frame{header.request_id, std::move(std::get<message>(m))};
}

} // namespace ceco::wire
