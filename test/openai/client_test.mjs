// Drives `ceco serve` with the official OpenAI client: models.list, a chat
// completion, a streamed chat completion (chunks arrive one by one and join
// to the non-streamed text: greedy decoding), a legacy completion streamed
// and not, and the client's error for an unknown model.
//
//   node client_test.mjs http://127.0.0.1:PORT/v1
import OpenAI from 'openai';

const baseURL = process.argv[2];
const client = new OpenAI({ baseURL, apiKey: 'none', maxRetries: 0, timeout: 60_000 });
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

const models = await client.models.list();
const ids = models.data.map((m) => m.id);
check('models.list names one model', ids.length === 1, JSON.stringify(ids));
const model = ids[0];

const messages = [{ role: 'user', content: 'And God said' }];
const chat = await client.chat.completions.create({ model, messages, max_tokens: 20 });
const text = chat.choices[0].message.content;
check('chat: text', typeof text === 'string' && text.length > 0, JSON.stringify(text));
check('chat: finish_reason', chat.choices[0].finish_reason === 'length', chat.choices[0].finish_reason);
check('chat: usage', chat.usage.completion_tokens === 20 && chat.usage.prompt_tokens > 0,
      JSON.stringify(chat.usage));
check('chat: ceco figures', chat.ceco && typeof chat.ceco.cloud_requests === 'number',
      JSON.stringify(chat.ceco));

const stream = await client.chat.completions.create({
  model, messages, max_tokens: 20, stream: true, stream_options: { include_usage: true },
});
let joined = '';
let chunks = 0;
const arrivals = [];
let usage = null;
for await (const chunk of stream) {
  if (chunk.usage) usage = chunk.usage;
  const delta = chunk.choices[0]?.delta?.content;
  if (delta) {
    joined += delta;
    chunks++;
    arrivals.push(performance.now());
  }
}
check('streamed chat: several chunks', chunks >= 5, `${chunks} chunks`);
check('streamed chat joins to the non-streamed text', joined === text,
      `${JSON.stringify(joined)} vs ${JSON.stringify(text)}`);
check('streamed chat: chunks arrive one by one',
      arrivals[arrivals.length - 1] - arrivals[0] > 0, JSON.stringify(arrivals));
check('streamed chat: usage chunk', usage && usage.completion_tokens === 20, JSON.stringify(usage));

const legacy = await client.completions.create({ model, prompt: 'In the beginning', max_tokens: 16 });
check('completion: text', typeof legacy.choices[0].text === 'string' && legacy.choices[0].text.length > 0);
check('completion: usage', legacy.usage.completion_tokens === 16, JSON.stringify(legacy.usage));
const legacyStream = await client.completions.create({
  model, prompt: 'In the beginning', max_tokens: 16, stream: true,
});
let legacyJoined = '';
for await (const chunk of legacyStream) legacyJoined += chunk.choices[0]?.text ?? '';
check('streamed completion joins to the non-streamed text', legacyJoined === legacy.choices[0].text,
      `${JSON.stringify(legacyJoined)} vs ${JSON.stringify(legacy.choices[0].text)}`);

try {
  await client.chat.completions.create({ model: 'no-such-model', messages, max_tokens: 2 });
  check('unknown model is refused', false, 'accepted');
} catch (e) {
  check('unknown model is a 404 NotFoundError', e instanceof OpenAI.NotFoundError && e.status === 404,
        String(e));
}

console.log(`openai client: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
