// What a display name may be. Other agents send to an agent by its name, so
// the engine refuses a name that could not be sent to (src/agent/address.rs,
// `classify`, checked at start). The CLI, the console server and the console
// page check the same rule where the name is typed, so the refusal names the
// field instead of stopping the engine; the engine stays the judge (a name
// that reads as an AMID is refused there only).
//
//   import { nameProblem } from './agent-name.js';
//   nameProblem('bob the builder')  // 'it contains a space or a control character…'
//   nameProblem('laptop-claw')      // undefined

export const NAME_MAX_CHARS = 128;

/** Why `name` cannot be an agent's name, or undefined when it can. */
export function nameProblem(name) {
  const s = String(name ?? '').trim();
  if (!s) return 'it is empty';
  if ([...s].length > NAME_MAX_CHARS) return `it is longer than ${NAME_MAX_CHARS} characters`;
  if (/[\s\p{Cc}]/u.test(s)) return 'it contains a space or a control character: a name is one word, such as alice or laptop-claw';
  if (s.toLowerCase().startsWith('did:')) return 'it starts with did:, as an agent\'s DID does';
  if (s.startsWith('azcp_')) return 'it is a pairing token';
  return undefined;
}
