// A scripted OpenAI-compatible /v1/chat/completions server on loopback, for
// one agent turn without a real model (openclaw-host.md §12.2 step 5):
//   - while the conversation has no tool result yet and the request offers the
//     tool `toolName`, answer with one call of it (arguments `toolArgs`);
//   - once a tool result is there, answer with text: `replyPrefix` + the
//     result's text, so the test can see what reached the model.
// Streams (SSE) when asked to, answers plain JSON otherwise.
import http from 'node:http';

function textOf(content) {
  if (typeof content === 'string') return content;
  if (Array.isArray(content)) return content.map((c) => (typeof c === 'string' ? c : c?.text ?? '')).join('');
  return '';
}

export async function startStubLlm({ toolName, toolArgs = {}, replyPrefix = 'TOOL SAID: ' }) {
  const requests = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', () => {
      let j = {};
      try { j = JSON.parse(body || '{}'); } catch { /* keep {} */ }
      requests.push({ url: req.url, body: j });
      if (!req.url.endsWith('/chat/completions')) {
        res.writeHead(404, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: { message: 'not found' } }));
        return;
      }
      const messages = Array.isArray(j.messages) ? j.messages : [];
      const toolResult = [...messages].reverse().find((m) => m.role === 'tool');
      const offersTool = (j.tools ?? []).some((t) => t?.function?.name === toolName);
      const id = `chatcmpl-${requests.length}`;
      let delta;
      let finish;
      if (!toolResult && offersTool) {
        delta = {
          role: 'assistant',
          tool_calls: [{ index: 0, id: `call_${requests.length}`, type: 'function', function: { name: toolName, arguments: JSON.stringify(toolArgs) } }],
        };
        finish = 'tool_calls';
      } else {
        delta = { role: 'assistant', content: toolResult ? `${replyPrefix}${textOf(toolResult.content)}` : 'ok' };
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
