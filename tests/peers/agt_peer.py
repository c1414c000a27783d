#!/usr/bin/env python3
"""Independent AgentMesh test peer built on the AGT Python reference crypto.

Crypto comes from the PyPI package agent-governance-toolkit-core 5.0.0
(``agentmesh.encryption``: X3DHKeyManager, SecureChannel, DoubleRatchet).
That package ships no registry/relay *client*, so the glue below (registry
REST with proof-of-possession, relay WebSocket, KNOCK, message frames, acks,
heartbeats) is written here, byte for byte per docs/spec/agentmesh-wire.md.

    python agt_peer.py --relay URL --registry URL [--seed HEX] [--state FILE] [--echo] [--capability NAME]...

stdout: one JSON object per line (events):
    {"event":"ready","did":...}
    {"event":"connected"} / {"event":"disconnected","code":...,"reason":...}
    {"event":"knock","from":...,"id":...,"otk":N|null}   (we accepted it)
    {"event":"knock_accept"|"knock_reject","from":...,"knock_id":...,"id":...}
    {"event":"sent","to":...,"id":...,"session":"new"|"existing"}
    {"event":"message","from":...,"payload":...,"id":...,"evidence":"encrypted"|"plaintext"}
    {"event":"error","source":"relay"|"registry"|"knock"|"decrypt"|"send"|"cmd"|...,"detail":...}
        (source "decrypt" with "pending":true = ciphertext buffered, waiting for its KNOCK)
    {"event":"republished"} / {"event":"bye"}
stdin: one JSON command per line:
    {"cmd":"send","to":DID,"payload":<json>}
    {"cmd":"offline"}   close the relay socket and stay offline
    {"cmd":"online"}    reconnect
    {"cmd":"republish"} register again + upload a bundle (after a registry restart)
    {"cmd":"quit"}      (also on EOF)

--state FILE persists identity, prekeys, sessions and seen ids so a restarted
peer (same DID) can still decrypt KNOCKs/messages queued while it was away;
without it every start creates fresh prekeys (and a fresh seed unless --seed).

--reference drives the AGT classes the way the AGT client drives them (the
TypeScript SDK 4.0.0 MeshClient, handleKnock/handleMessage, rule for rule), so
it forgives nothing:
  * no duplicate check: a frame id seen before is decrypted again;
  * one SecureChannel per peer, decrypted in place (the reference ratchet
    advances its state before the tag check, so a failed decrypt breaks it);
  * a KNOCK creates a session only when none exists for its sender, and
    KNOCKs are never acked (the relay re-delivers them; they are ignored);
  * a decrypt failure closes the session and logs
    {"event":"error","source":"session_desync"} (no ack);
  * an encrypted frame with no session waits at most 3 s (5 per peer) for a
    KNOCK, as the MeshClient's pre-KNOCK buffer, then is dropped and logged
    {"event":"error","source":"decrypt","dropped":true}.

Deliberate choices of the default (forgiving) mode, documented for the report:
  * The reference ratchet mutates state before the AEAD tag check. The peer
    decrypts on a deep copy of the channel and commits only on success, so a
    bad frame can't destroy a session (the crypto itself is untouched).
  * Several sessions per peer are kept (newest first) so glare or a peer
    restart does not wedge the conversation; sending uses the session that
    most recently decrypted something from that peer, else the newest.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import hashlib
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timezone

import websockets
from nacl.bindings import crypto_sign_ed25519_pk_to_curve25519
from nacl.signing import SigningKey, VerifyKey

from agentmesh.encryption.channel import ChannelEstablishment, SecureChannel
from agentmesh.encryption.ratchet import (
    DoubleRatchet,
    EncryptedMessage,
    MessageHeader,
    RatchetState,
)
from agentmesh.encryption.x3dh import (
    OneTimePreKey,
    PreKeyBundle,
    SignedPreKey,
    X25519KeyPair,
    X3DHKeyManager,
)

HEARTBEAT_SECS = 20
OTK_COUNT = 10


# ───────────────────────────────────────────────────────────── encodings


def b64u(b: bytes) -> str:  # registry JSON: base64url, no padding
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


def b64s(b: bytes) -> str:  # relay frames: standard base64, padded
    return base64.b64encode(b).decode()


def b64any(s: str) -> bytes:  # accept both alphabets, with or without padding
    s = s.strip().replace("-", "+").replace("_", "/")
    return base64.b64decode(s + "=" * (-len(s) % 4), validate=True)


def now_iso() -> str:  # JS toISOString(): 2026-01-02T03:04:05.678Z
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def did_of(ed_pub: bytes) -> str:
    return "did:mesh:" + hashlib.sha256(ed_pub).hexdigest()[:32]


def compact(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


# Wire builders (key order as the TS SDK emits it; checked against vectors.json
# by agt_vectors_check.py).


def connect_frame(sk: SigningKey, ts: str) -> dict:
    pub = bytes(sk.verify_key)
    return {"v": 1, "type": "connect", "from": did_of(pub), "public_key": b64s(pub),
            "timestamp": ts, "signature": b64s(sk.sign(ts.encode("utf-8")).signature)}


def register_body(sk: SigningKey, ts: str, capabilities=(), metadata=None) -> dict:
    pk = b64u(bytes(sk.verify_key))
    proof = b64u(sk.sign((pk + ts).encode("ascii")).signature)
    return {"public_key": pk, "proof": proof, "proof_timestamp": ts,
            "capabilities": list(capabilities), "metadata": dict(metadata or {})}


def auth_header(sk: SigningKey, ts: str) -> str:
    sig = b64u(sk.sign(ts.encode("utf-8")).signature)
    return f"Ed25519-Timestamp {did_of(bytes(sk.verify_key))} {ts} {sig}"


def prekey_body(km: X3DHKeyManager) -> dict:
    spk = km.signed_pre_key
    return {
        "identity_key": b64u(km.identity_key.public_key),
        "identity_key_ed": b64u(km.ed25519_public),
        "signed_pre_key": {"key_id": spk.key_id, "public_key": b64u(spk.key_pair.public_key),
                           "signature": b64u(spk.signature)},
        "one_time_pre_keys": [{"key_id": o.key_id, "public_key": b64u(o.key_pair.public_key)}
                              for o in sorted(km.one_time_pre_keys.values(), key=lambda o: o.key_id)],
    }


def establishment_obj(est: ChannelEstablishment) -> dict:
    e = {"ik": b64s(est.initiator_identity_key), "ek": b64s(est.ephemeral_public_key)}
    if est.used_one_time_key_id is not None:
        e["otk"] = est.used_one_time_key_id  # omitted when no OPK was used
    return e


def header_obj(m: EncryptedMessage) -> dict:
    return {"dh": b64s(m.header.dh_public_key), "pn": m.header.previous_chain_length,
            "n": m.header.message_number}


def emit(**evt) -> None:
    sys.stdout.write(json.dumps(evt, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def log(msg: str) -> None:
    sys.stderr.write(f"[agt_peer {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


# ─────────────────────────────────────────────────────────────── sessions


class Session:
    """One SecureChannel plus what we need to persist it."""

    def __init__(self, channel: SecureChannel, initiator: bool, created: float):
        self.channel = channel
        self.initiator = initiator
        self.created = created
        self.last_rx = 0.0

    def to_dict(self) -> dict:
        return {
            "state": self.channel._ratchet.state.to_dict(),
            "ad": self.channel._associated_data.hex(),  # full channel AD (DIDs ‖ IK_A ‖ IK_B)
            "local_ik": self.channel.local_identity_key.hex(),
            "remote_ik": self.channel.remote_identity_key.hex(),
            "initiator": self.initiator,
            "created": self.created,
            "last_rx": self.last_rx,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Session":
        ch = SecureChannel(
            ratchet=DoubleRatchet(RatchetState.from_dict(d["state"])),
            associated_data=bytes.fromhex(d["ad"]),
            local_identity_key=bytes.fromhex(d["local_ik"]),
            remote_identity_key=bytes.fromhex(d["remote_ik"]),
        )
        s = cls(ch, d["initiator"], d["created"])
        s.last_rx = d.get("last_rx", 0.0)
        return s

    def can_send(self) -> bool:
        return self.channel._ratchet.state.chain_key_send is not None


# ─────────────────────────────────────────────────────────────────── peer


class Peer:
    def __init__(self, args):
        self.relay = args.relay.rstrip("/")
        self.registry = args.registry.rstrip("/")
        self.echo = args.echo
        # Registered before "agt-peer": a kars sandbox is found by its name
        # as a capability (kars-mesh-plugin.md §6.2).
        self.capabilities = list(getattr(args, "capability", None) or [])
        self.state_path = args.state
        self.sessions: dict[str, list[Session]] = {}
        self.seen: list[str] = []  # ids already processed (bounded)
        self.early: dict[str, list[dict]] = {}  # ciphertext before its KNOCK
        self.outbox: list[dict] = []
        self.ws = None
        self.want_online = True
        self.online_evt = asyncio.Event()
        self.stop_evt = asyncio.Event()
        self.from_state = False
        self.reference = args.reference
        self.ref_buffer: dict[str, list[tuple[float, dict]]] = {}

        st = None
        if self.state_path and os.path.exists(self.state_path):
            with open(self.state_path) as f:
                st = json.load(f)
        seed = bytes.fromhex(st["seed"]) if st else (
            bytes.fromhex(args.seed) if args.seed else os.urandom(32))
        if len(seed) != 32:
            raise SystemExit("--seed must be 32 bytes of hex")
        self.seed = seed
        self.sk = SigningKey(seed)
        self.ed_pub = bytes(self.sk.verify_key)
        self.did = did_of(self.ed_pub)
        # PY from_ed25519 wants the 64-byte libsodium secret key (seed ‖ pk).
        self.km = X3DHKeyManager.from_ed25519_keys(seed + self.ed_pub, self.ed_pub)
        if st:
            self.from_state = True
            spk = st["spk"]
            self.km.signed_pre_key = SignedPreKey(
                key_pair=X25519KeyPair(bytes.fromhex(spk["priv"]), bytes.fromhex(spk["pub"])),
                signature=bytes.fromhex(spk["sig"]),
                key_id=spk["id"],
            )
            self.km.one_time_pre_keys = {
                int(k): OneTimePreKey(X25519KeyPair(bytes.fromhex(v[0]), bytes.fromhex(v[1])), int(k))
                for k, v in st["otks"].items()
            }
            self.km._next_spk_id = st["next_spk_id"]
            self.km._next_otk_id = st["next_otk_id"]
            self.sessions = {p: [Session.from_dict(x) for x in lst] for p, lst in st["sessions"].items()}
            self.seen = st["seen"]
        else:
            self.km.generate_signed_pre_key()
            self.km.generate_one_time_pre_keys(OTK_COUNT)

    # ── persistence ──
    def save(self) -> None:
        if not self.state_path:
            return
        spk = self.km.signed_pre_key
        st = {
            "seed": self.seed.hex(),
            "spk": {"priv": spk.key_pair.private_key.hex(), "pub": spk.key_pair.public_key.hex(),
                    "sig": spk.signature.hex(), "id": spk.key_id},
            "otks": {str(k): [o.key_pair.private_key.hex(), o.key_pair.public_key.hex()]
                     for k, o in self.km.one_time_pre_keys.items()},
            "next_spk_id": self.km._next_spk_id,
            "next_otk_id": self.km._next_otk_id,
            "sessions": {p: [s.to_dict() for s in lst] for p, lst in self.sessions.items()},
            "seen": self.seen[-2000:],
        }
        tmp = self.state_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(st, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_path)

    # ── registry (blocking urllib, run in a thread) ──
    def _auth(self) -> str:
        return auth_header(self.sk, now_iso())

    def _http(self, method: str, path: str, body=None, auth=False):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.registry + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if auth:
            req.add_header("Authorization", self._auth())
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except Exception:
                return e.code, raw.decode(errors="replace")

    def register_and_publish(self) -> None:
        st, body = self._http("POST", "/v1/agents", register_body(
            self.sk, now_iso(), [*self.capabilities, "agt-peer"], {"impl": "agt-python-5.0.0"}))
        if st == 201:
            if body.get("did") != self.did:
                raise RuntimeError(f"registry derived {body.get('did')}, we derived {self.did}")
        elif st != 409:
            raise RuntimeError(f"register failed: {st} {body}")
        # A restarted peer with persisted keys keeps the bundle already on a
        # registry that knows it (re-uploading would re-offer popped OPKs).
        if st == 409 and self.from_state:
            return
        self.publish_prekeys()

    def publish_prekeys(self) -> None:
        if len(self.km.one_time_pre_keys) < OTK_COUNT // 2:
            self.km.generate_one_time_pre_keys(OTK_COUNT)
        st, resp = self._http("PUT", f"/v1/agents/{self.did}/prekeys", prekey_body(self.km), auth=True)
        if st != 200:
            raise RuntimeError(f"prekey upload failed: {st} {resp}")
        self.save()

    def fetch_bundle(self, peer: str) -> PreKeyBundle:
        st, b = self._http("GET", f"/v1/agents/{peer}/prekeys")
        if st != 200:
            raise RuntimeError(f"prekey fetch for {peer} failed: {st} {b}")
        if not b.get("identity_key_ed"):
            raise RuntimeError("bundle has no identity_key_ed")
        ik_ed = b64any(b["identity_key_ed"])
        ik = b64any(b["identity_key"])
        # Bind the bundle to the DID (the registry checks nothing, §3.4).
        if len(ik_ed) != 32 or did_of(ik_ed) != peer:
            raise RuntimeError("bundle identity_key_ed does not hash to the peer DID")
        if ik != crypto_sign_ed25519_pk_to_curve25519(ik_ed):
            raise RuntimeError("bundle identity_key is not the X25519 form of identity_key_ed")
        otk = b.get("one_time_pre_key")
        return PreKeyBundle(
            identity_key=ik,
            identity_key_ed=ik_ed,
            signed_pre_key=b64any(b["signed_pre_key"]["public_key"]),
            signed_pre_key_signature=b64any(b["signed_pre_key"]["signature"]),
            signed_pre_key_id=b["signed_pre_key"]["key_id"],
            one_time_pre_key=b64any(otk["public_key"]) if otk else None,
            one_time_pre_key_id=otk["key_id"] if otk else None,
        )

    # ── relay ──
    def ws_url(self) -> str:
        u = self.relay
        if u.startswith("http"):
            u = "ws" + u[4:]
        return u + "/ws"

    async def send_frame(self, frame: dict) -> None:
        if self.ws is not None:
            try:
                await self.ws.send(compact(frame))
                return
            except Exception as e:
                log(f"send failed ({e}); queueing")
        self.outbox.append(frame)

    async def relay_loop(self) -> None:
        backoff = 0.2
        while not self.stop_evt.is_set():
            if not self.want_online:
                await self.online_evt.wait()
                self.online_evt.clear()
                continue
            try:
                async with websockets.connect(self.ws_url(), open_timeout=5, ping_interval=None,
                                              max_size=None) as ws:
                    await ws.send(compact(connect_frame(self.sk, now_iso())))
                    self.ws = ws
                    backoff = 0.2
                    emit(event="connected")
                    pending, self.outbox = self.outbox, []
                    for f in pending:
                        await self.send_frame(f)
                    hb = asyncio.create_task(self.heartbeat(ws))
                    try:
                        async for text in ws:
                            try:
                                frame = json.loads(text)
                            except ValueError:
                                emit(event="error", source="relay", detail="non-JSON frame")
                                continue
                            await self.on_frame(frame)
                            if not self.want_online:
                                await ws.close(1000, "client offline")
                    finally:
                        hb.cancel()
                        self.ws = None
                    emit(event="disconnected", code=ws.close_code, reason=ws.close_reason or "")
                    if ws.close_code in (4006,) or (ws.close_code == 1000 and ws.close_reason == "session_replaced"):
                        emit(event="error", source="relay", detail="session replaced; not reconnecting")
                        self.want_online = False
            except (OSError, websockets.WebSocketException, asyncio.TimeoutError) as e:
                self.ws = None
                log(f"relay connect failed: {e!r}")
            if self.stop_evt.is_set():
                break
            if self.want_online:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def heartbeat(self, ws) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECS)
            await ws.send(json.dumps({"v": 1, "type": "heartbeat", "from": self.did, "ts": now_iso()}))

    async def ack(self, fid) -> None:
        if fid:
            await self.send_frame({"v": 1, "type": "ack", "id": fid})

    def mark_seen(self, fid) -> None:
        if fid:
            self.seen.append(fid)
            del self.seen[:-2000]

    async def on_frame(self, f: dict) -> None:
        t = f.get("type")
        fid = f.get("id")
        if t == "error":
            emit(event="error", source="relay", detail=f.get("detail"))
            return
        if self.reference:
            await self.on_frame_reference(f)
            return
        if t in ("knock", "message", "knock_accept", "knock_reject") and fid in self.seen:
            await self.ack(fid)  # redelivery of something already consumed
            return
        if t == "knock":
            await self.on_knock(f)
        elif t == "message":
            await self.on_message(f)
        elif t in ("knock_accept", "knock_reject"):
            emit(event=t, **{"from": f.get("from"), "knock_id": f.get("knock_id"), "id": fid})
            self.mark_seen(fid)
            self.save()
            await self.ack(fid)
        else:
            emit(event="error", source="peer", detail=f"unknown frame type {t!r}")

    async def on_knock(self, f: dict) -> None:
        peer, fid = f.get("from"), f.get("id")
        est = f.get("establishment") or {}
        try:
            ik = b64any(est.get("ik") or est["initiator_identity_key"])
            ek = b64any(est.get("ek") or est["ephemeral_public_key"])
            otk = est["otk"] if "otk" in est else est.get("used_one_time_key_id")
            ad = f"{peer}|{self.did}".encode()  # initiator DID first
            ch = SecureChannel.create_receiver(
                self.km, ChannelEstablishment(ik, ek, otk), associated_data=ad)
        except Exception as e:
            emit(event="error", source="knock", **{"from": peer, "id": fid, "detail": repr(e)})
            self.mark_seen(fid)
            self.save()
            await self.ack(fid)
            await self.send_frame({"v": 1, "type": "knock_reject", "from": self.did, "to": peer,
                                   "id": str(uuid.uuid4()), "knock_id": fid,
                                   "reason": "policy_denied", "ts": now_iso()})
            return
        sess = Session(ch, False, time.time())
        self.sessions.setdefault(peer, []).insert(0, sess)
        del self.sessions[peer][4:]
        self.mark_seen(fid)
        if len(self.km.one_time_pre_keys) < OTK_COUNT // 2:
            await asyncio.to_thread(self.publish_prekeys)
        self.save()
        await self.ack(fid)
        emit(event="knock", **{"from": peer, "id": fid, "otk": otk})
        await self.send_frame({"v": 1, "type": "knock_accept", "from": self.did, "to": peer,
                               "id": str(uuid.uuid4()), "knock_id": fid, "ts": now_iso()})
        for early in self.early.pop(peer, []):
            if early.get("id") not in self.seen:
                await self.on_message(early, replay=True)

    async def on_message(self, f: dict, replay: bool = False) -> None:
        peer, fid = f.get("from"), f.get("id")
        hdr = f.get("header")
        if not isinstance(hdr, dict) or not isinstance(hdr.get("dh"), str):
            # plaintext peer (TS dialect: ciphertext+plaintext:true; controller: payload)
            body = f.get("payload") if isinstance(f.get("payload"), str) else f.get("ciphertext")
            try:
                raw = b64any(body)
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    text = raw.decode("latin-1")
                payload = json.loads(text)
            except Exception as e:
                emit(event="error", source="message", **{"from": peer, "id": fid, "detail": f"bad plaintext frame: {e!r}"})
                payload = None
            self.mark_seen(fid)
            self.save()
            await self.ack(fid)
            if payload is not None:
                emit(event="message", evidence="plaintext", payload=payload, **{"from": peer, "id": fid})
            return
        try:
            msg = EncryptedMessage(
                header=MessageHeader(b64any(hdr["dh"]), int(hdr["pn"]), int(hdr["n"])),
                ciphertext=b64any(f["ciphertext"]),
            )
        except Exception as e:
            emit(event="error", source="message", **{"from": peer, "id": fid, "detail": f"malformed: {e!r}"})
            await self.ack(fid)
            return
        plaintext = None
        for sess in self.sessions.get(peer, []):
            trial = copy.deepcopy(sess.channel)  # reference ratchet mutates before the tag check
            try:
                plaintext = trial.receive(msg)
            except Exception:
                continue
            sess.channel = trial
            sess.last_rx = time.time()
            break
        if plaintext is None:
            if not replay and len(self.early.setdefault(peer, [])) < 20:
                # maybe its KNOCK has not arrived yet: keep it, don't ack
                self.early[peer].append(f)
                emit(event="error", source="decrypt", pending=True, **{"from": peer, "id": fid,
                     "detail": "no session decrypts this frame (buffered until a KNOCK)"})
            else:
                emit(event="error", source="decrypt", **{"from": peer, "id": fid, "detail": "undecryptable"})
            return
        self.mark_seen(fid)
        self.save()
        await self.ack(fid)
        try:
            payload = json.loads(plaintext.decode("utf-8"))
        except Exception:
            payload = {"raw_b64": b64s(plaintext)}
        emit(event="message", evidence="encrypted", payload=payload, **{"from": peer, "id": fid})
        if self.echo:
            await self.send(peer, {"type": "echo", "content": payload})

    # ── the reference client's rules (MeshClient 4.0.0), used with --reference ──
    async def on_frame_reference(self, f: dict) -> None:
        t = f.get("type")
        if t == "error":
            emit(event="error", source="relay", detail=f.get("detail"))
        elif t == "knock":
            await self.ref_knock(f)
        elif t == "message":
            await self.ref_message(f)
        elif t in ("knock_accept", "knock_reject"):
            emit(event=t, **{"from": f.get("from"), "knock_id": f.get("knock_id"), "id": f.get("id")})
            if t == "knock_reject":
                self.sessions.pop(f.get("from"), None)

    async def ref_knock(self, f: dict) -> None:
        peer, fid = f.get("from"), f.get("id")
        est = f.get("establishment")
        if est and not self.sessions.get(peer):
            try:
                ch = SecureChannel.create_receiver(
                    self.km,
                    ChannelEstablishment(b64any(est["ik"]), b64any(est["ek"]), est.get("otk")),
                    associated_data=f"{peer}|{self.did}".encode())
            except Exception as e:
                emit(event="error", source="knock", **{"from": peer, "id": fid, "detail": repr(e)})
                await self.send_frame({"v": 1, "type": "knock_reject", "from": self.did, "to": peer,
                                       "id": str(uuid.uuid4()), "knock_id": fid,
                                       "reason": "policy_denied", "ts": now_iso()})
                self.ref_buffer.pop(peer, None)
                return
            self.sessions[peer] = [Session(ch, False, time.time())]
            self.save()
            emit(event="knock", **{"from": peer, "id": fid, "otk": est.get("otk")})
        else:
            emit(event="knock_ignored", **{"from": peer, "id": fid})
        await self.send_frame({"v": 1, "type": "knock_accept", "from": self.did, "to": peer,
                               "id": str(uuid.uuid4()), "knock_id": fid, "ts": now_iso()})
        now = time.time()
        for at, early in self.ref_buffer.pop(peer, []):
            if now - at <= 3.0:
                await self.ref_message(early)
            else:
                emit(event="error", source="decrypt", dropped=True,
                     **{"from": peer, "id": early.get("id"), "detail": "pre-KNOCK frame expired"})

    async def ref_message(self, f: dict) -> None:
        peer, fid = f.get("from"), f.get("id")
        hdr = f.get("header")
        if f.get("plaintext"):
            payload = json.loads(b64any(f.get("ciphertext")).decode("latin-1"))
            await self.ack(fid)
            emit(event="message", evidence="plaintext", payload=payload, **{"from": peer, "id": fid})
            return
        sessions = self.sessions.get(peer)
        if not sessions:
            buf = self.ref_buffer.setdefault(peer, [])
            if len(buf) >= 5:
                old = buf.pop(0)[1]
                emit(event="error", source="decrypt", dropped=True,
                     **{"from": peer, "id": old.get("id"), "detail": "pre-KNOCK buffer full"})
            buf.append((time.time(), f))
            return
        ch = sessions[0].channel
        try:
            msg = EncryptedMessage(
                header=MessageHeader(b64any(hdr["dh"]), int(hdr["pn"]), int(hdr["n"])),
                ciphertext=b64any(f["ciphertext"]),
            )
            plaintext = ch.receive(msg)  # in place, as SecureChannel.receive is used
        except Exception as e:
            self.sessions.pop(peer, None)
            self.save()
            emit(event="error", source="session_desync", **{"from": peer, "id": fid, "detail": repr(e)})
            return
        self.save()
        await self.ack(fid)
        payload = json.loads(plaintext.decode("utf-8"))
        emit(event="message", evidence="encrypted", payload=payload, **{"from": peer, "id": fid})
        if self.echo:
            await self.send(peer, {"type": "echo", "content": payload})

    def pick_session(self, peer: str) -> Session | None:
        cands = [s for s in self.sessions.get(peer, []) if s.can_send()]
        if not cands:
            return None
        return max(cands, key=lambda s: (s.last_rx, s.created))

    async def send(self, peer: str, payload) -> None:
        pt = compact(payload).encode("utf-8")  # TS: JSON.stringify(payload), UTF-8
        sess = self.pick_session(peer)
        kind = "existing"
        if sess is None:
            kind = "new"
            try:
                bundle = await asyncio.to_thread(self.fetch_bundle, peer)
                ad = f"{self.did}|{peer}".encode()
                ch, est = SecureChannel.create_sender(self.km, bundle, associated_data=ad)
            except Exception as e:
                emit(event="error", source="send", to=peer, detail=repr(e))
                return
            sess = Session(ch, True, time.time())
            self.sessions.setdefault(peer, []).insert(0, sess)
            del self.sessions[peer][4:]
            establishment = establishment_obj(est)
            knock = {"v": 1, "type": "knock", "from": self.did, "to": peer, "id": str(uuid.uuid4()),
                     "ts": now_iso(), "intent": {"action": "establish_session"},
                     "establishment": establishment}
            self.save()
            await self.send_frame(knock)
        m = sess.channel.send(pt)
        self.save()
        fid = str(uuid.uuid4())
        await self.send_frame({
            "v": 1, "type": "message", "from": self.did, "to": peer, "id": fid, "ts": now_iso(),
            "header": header_obj(m),
            "ciphertext": b64s(m.ciphertext),
        })
        emit(event="sent", to=peer, id=fid, session=kind)

    # ── commands ──
    async def commands(self, q: asyncio.Queue) -> None:
        while True:
            line = await q.get()
            if line is None:
                break
            line = line.strip()
            if not line:
                continue
            try:
                c = json.loads(line)
                cmd = c.get("cmd")
                if cmd == "send":
                    await self.send(c["to"], c.get("payload"))
                elif cmd == "offline":
                    self.want_online = False
                    if self.ws is not None:
                        await self.ws.close(1000, "client offline")
                elif cmd == "online":
                    self.want_online = True
                    self.online_evt.set()
                elif cmd == "republish":
                    await asyncio.to_thread(self.register_and_publish_fresh)
                    emit(event="republished")
                elif cmd == "quit":
                    break
                else:
                    emit(event="error", source="cmd", detail=f"unknown cmd {cmd!r}")
            except Exception as e:
                emit(event="error", source="cmd", detail=repr(e))
        self.stop_evt.set()

    def register_and_publish_fresh(self) -> None:
        """After a registry restart: register again and upload the bundle."""
        self.from_state = False
        self.register_and_publish()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--relay", required=True)
    ap.add_argument("--registry", required=True)
    ap.add_argument("--seed", help="32-byte Ed25519 seed, hex")
    ap.add_argument("--state", help="persist keys/sessions here (JSON)")
    ap.add_argument("--echo", action="store_true")
    ap.add_argument("--reference", action="store_true",
                    help="behave as the AGT client does (see the module docstring)")
    ap.add_argument("--capability", action="append", help="register this capability (repeatable)")
    args = ap.parse_args()

    peer = Peer(args)
    try:
        await asyncio.to_thread(peer.register_and_publish)
    except Exception as e:
        emit(event="error", source="registry", detail=str(e))
        sys.exit(2)

    loop = asyncio.get_running_loop()
    q: asyncio.Queue = asyncio.Queue()

    def reader():
        for line in sys.stdin:
            loop.call_soon_threadsafe(q.put_nowait, line)
        loop.call_soon_threadsafe(q.put_nowait, None)

    threading.Thread(target=reader, daemon=True).start()
    emit(event="ready", did=peer.did)
    relay = asyncio.create_task(peer.relay_loop())
    await peer.commands(q)
    if peer.ws is not None:
        try:
            await peer.ws.send(json.dumps({"v": 1, "type": "disconnect", "from": peer.did}))
            await asyncio.wait_for(peer.ws.close(1000, "client disconnect"), 2)
        except Exception:
            pass
    relay.cancel()
    peer.save()
    emit(event="bye")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
