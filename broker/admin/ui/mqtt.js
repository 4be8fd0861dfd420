// A small MQTT 3.1.1 client over WebSocket (subprotocol "mqtt", binary
// frames) for the dashboard's live view: CONNECT, SUBSCRIBE, UNSUBSCRIBE,
// PUBLISH at QoS 0-2 both ways, PINGREQ. MQTT packets may span WebSocket
// frames and a frame may hold several packets, so input is a byte stream.
const enc = new TextEncoder();

function utf8(s) {
  const b = enc.encode(s);
  if (b.length > 65535) throw new Error("string longer than 65535 bytes");
  return [b.length >> 8, b.length & 255, ...b];
}

// concat joins byte arrays and plain arrays of bytes (no spreading: a large
// payload would overflow the argument list).
function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) { out.set(p, off); off += p.length; }
  return out;
}

// packet frames a control packet: fixed header byte, remaining length as
// MQTT's variable-length integer, then the body made of parts.
function packet(first, ...parts) {
  const body = concat(parts);
  const len = [];
  let n = body.length;
  do {
    let d = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) d |= 128;
    len.push(d);
  } while (n > 0);
  const out = new Uint8Array(1 + len.length + body.length);
  out[0] = first;
  out.set(len, 1);
  out.set(body, 1 + len.length);
  return out;
}

const CONNACK_ERRORS = {
  1: "unacceptable protocol version", 2: "client identifier rejected", 3: "server unavailable",
  4: "bad user name or password", 5: "not authorized",
};

export class MQTTClient {
  constructor() {
    this.onmessage = null; // (topic, payload Uint8Array, {qos, retain}) => void
    this.onclose = null; // (reason string) => void
    this.ws = null;
    this.buf = new Uint8Array(0);
    this.nextId = 1;
    this.pending = new Map(); // packet id -> {resolve, reject}
    this.ping = null;
    this.awaitRel = new Set(); // inbound QoS 2 ids delivered, PUBREL not yet seen
    this.clearConnectTimer = () => {};
  }

  // connect opens the WebSocket and resolves after a successful CONNACK.
  connect(url, { clientId, username, password, keepalive = 30, timeoutMs = 10000 }) {
    return new Promise((resolve, reject) => {
      let ws;
      try {
        ws = new WebSocket(url, "mqtt");
      } catch (e) {
        reject(e);
        return;
      }
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      this.connack = { resolve, reject };
      const timer = setTimeout(() => this.fail("no CONNACK within " + timeoutMs / 1000 + " s"), timeoutMs);
      ws.onopen = () => {
        let flags = 0x02; // clean session: the live view keeps no state
        const payload = [utf8(clientId)];
        if (username) { flags |= 0x80; payload.push(utf8(username)); }
        if (password) { flags |= 0x40; payload.push(utf8(password)); }
        this.send(packet(0x10, utf8("MQTT"), [4, flags, keepalive >> 8, keepalive & 255], ...payload));
        this.ping = setInterval(() => this.send(packet(0xc0)), keepalive * 1000 / 2);
      };
      // A socket's events count only while it is the current one: an old
      // socket closing must not end a newer session.
      ws.onmessage = (ev) => { if (this.ws === ws) this.read(new Uint8Array(ev.data)); };
      ws.onerror = () => { if (this.ws === ws) this.fail("WebSocket error (is " + url + " reachable?)"); };
      ws.onclose = (ev) => {
        clearTimeout(timer);
        if (this.ws === ws) this.fail("connection closed" + (ev.code ? " (" + ev.code + ")" : ""));
      };
      this.clearConnectTimer = () => clearTimeout(timer);
    });
  }

  send(bytes) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(bytes);
  }

  // fail ends the session once, rejecting whatever waits on it.
  fail(reason) {
    if (!this.ws) return;
    const ws = this.ws;
    this.ws = null;
    clearInterval(this.ping);
    this.clearConnectTimer();
    try { ws.close(); } catch (_) { /* already closed */ }
    if (this.connack) { this.connack.reject(new Error(reason)); this.connack = null; }
    for (const p of this.pending.values()) p.reject(new Error(reason));
    this.pending.clear();
    this.awaitRel.clear();
    this.buf = new Uint8Array(0);
    if (this.onclose) this.onclose(reason);
  }

  read(chunk) {
    const b = new Uint8Array(this.buf.length + chunk.length);
    b.set(this.buf);
    b.set(chunk, this.buf.length);
    let off = 0;
    for (;;) {
      // Fixed header: type byte, then a length of up to 4 bytes.
      let len = 0, mul = 1, i = off + 1, complete = false;
      while (i < b.length && i < off + 5) {
        len += (b[i] & 127) * mul;
        mul *= 128;
        if ((b[i++] & 128) === 0) { complete = true; break; }
      }
      if (!complete) {
        if (i >= off + 5) { this.fail("malformed packet length from server"); return; }
        break;
      }
      if (i + len > b.length) break;
      this.handle(b[off], b.subarray(i, i + len));
      if (!this.ws) return;
      off = i + len;
    }
    this.buf = b.slice(off);
  }

  handle(first, body) {
    const id = body.length >= 2 ? (body[0] << 8) | body[1] : 0;
    switch (first >> 4) {
      case 2: { // CONNACK
        const rc = body[1];
        if (!this.connack) return;
        if (rc !== 0) { this.fail("connection refused: " + (CONNACK_ERRORS[rc] || "code " + rc)); return; }
        this.clearConnectTimer();
        this.connack.resolve();
        this.connack = null;
        return;
      }
      case 3: { // PUBLISH
        const qos = (first >> 1) & 3;
        const tlen = (body[0] << 8) | body[1];
        const topic = new TextDecoder().decode(body.subarray(2, 2 + tlen));
        let p = 2 + tlen;
        const pid = qos > 0 ? (body[p] << 8) | body[p + 1] : 0;
        if (qos > 0) p += 2;
        if (qos === 1) this.send(packet(0x40, [pid >> 8, pid & 255]));
        if (qos === 2) {
          this.send(packet(0x50, [pid >> 8, pid & 255]));
          // Delivered at the first copy; a resend before PUBREL is the same message.
          if (this.awaitRel.has(pid)) return;
          this.awaitRel.add(pid);
        }
        if (this.onmessage) this.onmessage(topic, body.slice(p), { qos, retain: (first & 1) === 1 });
        return;
      }
      case 6: // PUBREL
        this.awaitRel.delete(id);
        this.send(packet(0x70, [id >> 8, id & 255]));
        return;
      case 5: // PUBREC for our QoS 2 publish
        this.send(packet(0x62, [id >> 8, id & 255]));
        return;
      case 4: case 7: case 11: // PUBACK, PUBCOMP, UNSUBACK
        this.settle(id, null);
        return;
      case 9: // SUBACK
        this.settle(id, body[2] === 0x80 ? new Error("subscription refused by the broker") : null, body[2]);
        return;
      default: // PINGRESP and anything else: nothing to do
    }
  }

  settle(id, err, value) {
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    if (err) p.reject(err); else p.resolve(value);
  }

  // request sends a packet carrying a fresh packet id (body(id) returns
  // the body's parts with the id in place) and resolves when the broker acknowledges that id.
  request(first, body) {
    if (!this.ws) return Promise.reject(new Error("not connected"));
    const id = this.nextId;
    this.nextId = this.nextId % 65535 + 1;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.send(packet(first, ...body([id >> 8, id & 255])));
    });
  }

  // subscribe resolves with the granted QoS.
  subscribe(filter, qos = 0) {
    return this.request(0x82, (id) => [id, utf8(filter), [qos]]);
  }

  unsubscribe(filter) {
    return this.request(0xa2, (id) => [id, utf8(filter)]);
  }

  // publish resolves when sent (QoS 0) or acknowledged (QoS 1 and 2).
  publish(topic, payload, { qos = 0, retain = false } = {}) {
    const data = typeof payload === "string" ? enc.encode(payload) : payload;
    const first = 0x30 | (qos << 1) | (retain ? 1 : 0);
    if (qos === 0) {
      if (!this.ws) return Promise.reject(new Error("not connected"));
      this.send(packet(first, utf8(topic), data));
      return Promise.resolve();
    }
    // The packet id follows the topic in a PUBLISH.
    return this.request(first, (id) => [utf8(topic), id, data]);
  }

  // close sends DISCONNECT and closes the socket.
  close() {
    this.send(packet(0xe0));
    this.fail("closed by the user");
  }
}
