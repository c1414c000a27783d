// A scripted OpenAI-compatible /v1/chat/completions server on loopback, for
// one agent turn without a real model (openclaw-host.md §12.2 step 5):
//   - `script: [{name, args}, ...]` (or one `toolName` + `toolArgs`): while
//     the conversation holds fewer tool results than the script has steps and
//     the request offers the next step's tool, answer with one call of it;
//   - once every step has its result, answer with text: `replyPrefix` + the
//     results' texts (joined by "\n---\n"), so the test can see what reached
//     the model.
// `beforeStep(i)` (optional, async) runs before step i is answered, so a test
// can hold the model until something has happened on the mesh.
// Streams (SSE) when asked to, answers plain JSON otherwise.
import http from 'node:http';

function textOf(content) {
  if (typeof content === 'string') return content;
  if (Array.isArray(content)) return content.map((c) => (typeof c === 'string' ? c : c?.text ?? '')).join('');
  return '';
}

export async function startStubLlm({ toolName, toolArgs = {}, script, replyPrefix = 'TOOL SAID: ', beforeStep }) {
  const steps = script ?? [{ name: toolName, args: toolArgs }];
  const requests = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', async () => {
      let j = {};
      try { j = JSON.parse(body || '{}'); } catch { /* keep {} */ }
      requests.push({ url: req.url, body: j });
      if (!req.url.endsWith('/chat/completions')) {
        res.writeHead(404, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: { message: 'not found' } }));
        return;
      }
      const messages = Array.isArray(j.messages) ? j.messages : [];
      const toolResults = messages.filter((m) => m.role === 'tool');
      const step = steps[toolResults.length];
      const offersTool = step && (j.tools ?? []).some((t) => t?.function?.name === step.name);
      const id = `chatcmpl-${requests.length}`;
      let delta;
      let finish;
      if (offersTool) {
        if (beforeStep) await beforeStep(toolResults.length);
        delta = {
          role: 'assistant',
          tool_calls: [{ index: 0, id: `call_${requests.length}`, type: 'function', function: { name: step.name, arguments: JSON.stringify(step.args ?? {}) } }],
        };
        finish = 'tool_calls';
      } else {
        const texts = toolResults.map((m) => textOf(m.content));
        delta = { role: 'assistant', content: texts.length ? `${replyPrefix}${texts.join('\n---\n')}` : 'ok' };
        finish = 'stop';
      }
      const usage = { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 };
      if (j.stream) {
        res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
        const chunk = (choice) => `data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created: 0, model: j.model ?? 'stub-1', choices: [choice] })}\n\n`;
        res.write(chunk({ index: 0, delta, finish_reason: null }));
        res.write(chunk({ index: 0, delta: {}, finish_reason: finish }));
        res.write(`data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created: 0, model: j.model ?? 'stub-1', choices: [], usage })}\n\n`);
        res.end('data: [DONE]\n\n');
      } else {
        const message = { role: 'assistant', content: delta.content ?? null };
        if (delta.tool_calls) message.tool_calls = delta.tool_calls.map(({ index, ...t }) => t);
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ id, object: 'chat.completion', created: 0, model: j.model ?? 'stub-1', choices: [{ index: 0, message, finish_reason: finish }], usage }));
      }
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return {
    baseUrl: `http://127.0.0.1:${port}/v1`,
    requests,
    close: () => new Promise((resolve) => { server.closeAllConnections?.(); server.close(() => resolve()); }),
  };
}
