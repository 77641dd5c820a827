// Drives `ceco serve --api-key KEY --max-concurrent 1 --queue 1` with the
// official OpenAI client: a wrong key is the client's AuthenticationError
// (401), the right one is served; a stream with sampling on while one more
// waits in the queue, and a third request is the client's RateLimitError
// (429) with Retry-After; logprobs is a BadRequestError naming the field.
//
//   node limits_test.mjs http://127.0.0.1:PORT/v1 KEY
import OpenAI from 'openai';

const baseURL = process.argv[2];
const apiKey = process.argv[3];
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 60_000 });
let passed = 0;
let failed = 0;

function check(what, ok, detail = '') {
  if (ok) {
    passed++;
  } else {
    failed++;
    console.error(`FAIL ${what}${detail ? ': ' + detail : ''}`);
  }
}

function header(e, name) {
  const h = e.headers;
  if (!h) return undefined;
  return typeof h.get === 'function' ? h.get(name) : h[name];
}

// A Prometheus sample of /metrics (open without the key by default).
async function metric(name) {
  const text = await (await fetch(baseURL.replace(/\/v1$/, '') + '/metrics')).text();
  const line = text.split('\n').find((l) => l.startsWith(name + ' '));
  return line ? Number(line.split(' ')[1]) : NaN;
}

async function waitFor(name, value) {
  for (let i = 0; i < 200; i++) {
    if ((await metric(name)) === value) return true;
    await new Promise((r) => setTimeout(r, 25));
  }
  return false;
}

const wrong = new OpenAI({ baseURL, apiKey: apiKey + 'x', maxRetries: 0, timeout: 60_000 });
try {
  await wrong.models.list();
  check('a wrong key is refused', false, 'accepted');
} catch (e) {
  check('a wrong key is an AuthenticationError (401)',
        e instanceof OpenAI.AuthenticationError && e.status === 401, String(e));
  check('401 in the OpenAI error format', e.code === 'invalid_api_key', JSON.stringify(e.error));
}

const models = await client.models.list();
const model = models.data[0].id;
check('the key is accepted', typeof model === 'string' && model.length > 0);

const messages = [{ role: 'user', content: 'And God said' }];
try {
  await client.chat.completions.create({ model, messages, max_tokens: 4, logprobs: true, top_logprobs: 2 });
  check('logprobs is refused', false, 'accepted');
} catch (e) {
  check('logprobs is a BadRequestError naming the field',
        e instanceof OpenAI.BadRequestError && e.param === 'logprobs', String(e));
}

// One stream runs (sampling parameters on), one waits in the queue, the
// third finds the queue full.
async function streamed() {
  const stream = await client.chat.completions.create({
    model, messages, max_tokens: 40, stream: true, temperature: 0.8, top_p: 0.9, seed: 7,
  });
  let text = '';
  let chunks = 0;
  let finish = null;
  for await (const chunk of stream) {
    const c = chunk.choices[0];
    if (c?.delta?.content) {
      text += c.delta.content;
      chunks++;
    }
    if (c?.finish_reason) finish = c.finish_reason;
  }
  return { text, chunks, finish };
}
const running = streamed();
check('the first stream runs', await waitFor('ceco_requests_in_flight', 1));
const queued = streamed();
check('the second waits in the queue', await waitFor('ceco_requests_queued', 1));
try {
  await client.chat.completions.create({ model, messages, max_tokens: 4 });
  check('past the queue: refused', false, 'accepted');
} catch (e) {
  check('past the queue: a RateLimitError (429)',
        e instanceof OpenAI.RateLimitError && e.status === 429, String(e));
  check('past the queue: Retry-After', header(e, 'retry-after') === '1',
        JSON.stringify(header(e, 'retry-after')));
}
for (const [name, p] of [['running', running], ['queued', queued]]) {
  const r = await p;
  check(`${name} stream: several chunks`, r.chunks >= 5, `${r.chunks} chunks`);
  check(`${name} stream: finish_reason`, r.finish === 'length', String(r.finish));
}
check('the queue is empty again', (await metric('ceco_requests_queued')) === 0);

console.log(`openai client (limits): ${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
