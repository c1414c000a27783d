// The engine's tool texts speak to an agent in tool calls ("Use mesh_pair
// first", "pass unread_only=false"); they are the original plugin's and stay
// so (js-host/ENGINE.md). A person reads the same sentences with what they
// use instead: the CLI's commands and flags (CLI_WORDS, cli-output.js), the
// console page's sections and buttons (PAGE_WORDS, console/console.js).
// Each left side is engine text verbatim (tests/host.cli-texts.test.mjs
// checks that src/ still says it). No Node module: the page imports this.

/** For a shell user: the command or flag that does it. */
export const CLI_WORDS = Object.freeze([
  ['Use mesh_pair first.', "Pair first: kars-mesh pair-with <token> (the cluster's operator makes one with kars-mesh pair generate)."],
  ['Pair first with mesh_pair.', "Pair first: kars-mesh pair-with <token> (the cluster's operator makes one with kars-mesh pair generate)."],
  ['then pair again with mesh_pair', 'then pair again with kars-mesh pair-with <token>'],
  ['pass unread_only=false to re-read', 'kars-mesh inbox --all shows them again'],
  ['You can now use cloud_offload to delegate tasks to the cloud.', 'You can now delegate tasks to the cluster: kars-mesh offload <task>'],
  ['Use cloud_offload to start one.', 'Start one with kars-mesh offload <task>.'],
  ['Another cloud_offload is being submitted.', 'Another offload is being submitted.'],
  ['then call cloud_offload again.', 'then run kars-mesh offload again.'],
  ['since cloud_offload read it', 'since kars-mesh offload read it'],
  [
    'Do not call more tools for this task now: progress and the result arrive on their own (offload_status shows a snapshot when the user asks).',
    'kars-mesh offload-status shows where it is (--wait 600 follows it).',
  ],
  ['offload_status has the controller\'s words', 'kars-mesh offload-status has the controller\'s words'],
  ['offload_status has its words', 'kars-mesh offload-status has its words'],
  ['offload_status says why', 'kars-mesh offload-status says why'],
  ['Cancelled by user via offload_cancel', 'Cancelled by user (kars-mesh offload-cancel)'],
  ['Use `discover` to list known agents', 'kars-mesh discover lists known agents'],
  ['use `discover` to list known agents', 'kars-mesh discover lists known agents'],
  ["use `discover` to find an agent's DID", "kars-mesh discover finds an agent's DID"],
  ['Call mesh_inbox with no arguments to see unread messages.', 'kars-mesh inbox shows unread messages.'],
  ['Pass force=true only if the user explicitly asked to run it again.', 'Add --force to run it again.'],
  ['❌ mesh_send: `to` is not usable', '❌ send: the recipient is not usable'],
  ['pass `capability` to find others', 'kars-mesh discover <capability> finds others'],
  ['The cloud sandbox is working on it.', "The cluster's sandbox is working on it."],
  ['No active cloud offload to cancel.', 'No active offload to cancel.'],
  ['Use `/offload` for status or `/offload cancel` to abort.', 'kars-mesh offload-status shows it; kars-mesh offload-cancel cancels it.'],
  ["❌ mesh_send: `to` is this agent's own DID; pass another agent's DID or name.", "❌ send: the recipient is this agent itself; give another agent's DID or name."],
  ['❌ mesh_inbox: `from` must be', '❌ inbox: --from must be'],
]);

/** For the console page: the section or button that does it. */
export const PAGE_WORDS = Object.freeze([
  ['Use mesh_pair first.', 'Pair first: paste a pairing token under "Pair with a cluster" (the cluster\'s operator makes one with kars-mesh pair generate).'],
  ['Pair first with mesh_pair.', 'Pair first: paste a pairing token under "Pair with a cluster" (the cluster\'s operator makes one with kars-mesh pair generate).'],
  ['then pair again with mesh_pair', 'then pair again under "Pair with a cluster"'],
  ['pass unread_only=false to re-read', 'clear "Unread only" to see them again'],
  ['You can now use cloud_offload to delegate tasks to the cloud.', 'You can now offload tasks to the cluster (under "Offload a task").'],
  ['Use cloud_offload to start one.', 'Start one under "Offload a task".'],
  ['Another cloud_offload is being submitted.', 'Another offload is being submitted.'],
  ['then call cloud_offload again.', 'then offload it again.'],
  ['since cloud_offload read it', 'since the offload read it'],
  [
    'Do not call more tools for this task now: progress and the result arrive on their own (offload_status shows a snapshot when the user asks).',
    'Its progress and result show here as they come.',
  ],
  ['offload_status has the controller\'s words', 'the offload\'s events below have the controller\'s words'],
  ['offload_status has its words', 'the offload\'s events below have its words'],
  ['offload_status says why', 'the offload\'s events below say why'],
  ['Cancelled by user via offload_cancel', 'Cancelled by user ("Cancel the offload")'],
  ['Use `discover` to list known agents', '"Discover agents" lists known agents'],
  ['use `discover` to list known agents', '"Discover agents" lists known agents'],
  ["use `discover` to find an agent's DID", '"Discover agents" finds an agent\'s DID'],
  ['Call mesh_inbox with no arguments to see unread messages.', 'The inbox below shows unread messages.'],
  ['❌ mesh_send: `to` is not usable', '❌ Send: the recipient is not usable'],
  ['pass `capability` to find others', 'give a capability to find others'],
  ['The cloud sandbox is working on it.', "The cluster's sandbox is working on it."],
  ['No active cloud offload to cancel.', 'No active offload to cancel.'],
  ['Use `/offload` for status or `/offload cancel` to abort.', 'Its progress shows below; "Cancel the offload" stops it.'],
  ["❌ mesh_send: `to` is this agent's own DID; pass another agent's DID or name.", "❌ Send: the recipient is this agent itself; give another agent's DID or name."],
  // "… but this agent is connected to Y. Start kars-mesh with that relay_url, then pair again."
  ['Start kars-mesh with that ', "This console's server is set up for another cluster: start kars-mesh console (its --relay and --registry) with the token's "],
]);

/** `text` with each left side of `table` replaced by its right side. */
export function inWords(text, table) {
  let t = String(text);
  for (const [tool, said] of table) t = t.split(tool).join(said);
  return t;
}
