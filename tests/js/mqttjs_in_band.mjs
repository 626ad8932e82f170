// MQTT.js as a device whose only network stack is MQTT: OAuth requests inside X-OAUTH2
// (docs/in-band.md). Usage:
//   node mqttjs_in_band.mjs refresh URL FORM        CONNECT carries the refresh form
//   node mqttjs_in_band.mjs reauth URL TOKEN FORM [MS] logs in with TOKEN, re-authenticates with
//                                                   FORM (AUTH 0x19) MS ms later (default 0),
//                                                   stays until disconnected
//   node mqttjs_in_band.mjs onboard URL FORM [fast] CONNECT carries the device form, then polls
//                                                   every `interval` s (fast: without waiting)
// Prints one JSON object per line as things happen:
//   {"event":"challenge","data":{...}}        an AUTH 0x18 from the broker, its data parsed
//   {"event":"connack","code":0,"data":{...},"expires_in":"..."} the CONNACK (token JSON, User
//                                             Property token-expires-in)
//   {"event":"auth","code":0,"data":{...},"expires_in":"..."} AUTH 0x00 ending a re-authentication
//   {"event":"refused","code":135,"reason":"..."} CONNACK or DISCONNECT with an error
//   {"event":"disconnect","code":160,"reason":"..."}
// Events after CONNACK carry "at_ms", the milliseconds since it. The script exits when the
// connection ends (0), or 1 on a local failure.
import mqtt from 'mqtt';

const [mode, url, ...rest] = process.argv.slice(2);
const METHOD = 'X-OAUTH2';
let connackAt = null;
const say = (o) => console.log(JSON.stringify(connackAt === null ? o : { ...o, at_ms: Date.now() - connackAt }));
const parse = (b) => { try { return b ? JSON.parse(b.toString()) : null; } catch { return b.toString(); } };
const auth = (reasonCode, data) => ({
  cmd: 'auth',
  reasonCode,
  properties: { authenticationMethod: METHOD, ...(data ? { authenticationData: Buffer.from(data) } : {}) },
});

const first = rest[0];
const client = mqtt.connect(url, {
  protocolVersion: 5,
  clientId: `mqttjs-${mode}-${process.pid}`,
  reconnectPeriod: 0,
  // An onboarding device waits for a person: CONNACK may take minutes.
  connectTimeout: 300000,
  rejectUnauthorized: false,
  properties: { authenticationMethod: METHOD, authenticationData: Buffer.from(first) },
});

let interval = 5;
client.handleAuth = (packet, callback) => {
  const data = parse(packet.properties?.authenticationData);
  if (packet.reasonCode === 0) {
    // The end of a re-authentication: AUTH 0x00 with the new token's JSON.
    say({ event: 'auth', code: 0, data, expires_in: packet.properties?.userProperties?.['token-expires-in'] });
    callback(null);
    return;
  }
  say({ event: 'challenge', data });
  if (data && data.interval) interval = data.interval;
  if (data && data.error === 'slow_down') interval += 5;
  const wait = rest[1] === 'fast' ? 0 : interval * 1000;
  // A poll: AUTH 0x18 with no data, after `interval` seconds (RFC 8628 §3.4).
  setTimeout(() => callback(null, auth(0x18)), wait);
};

client.on('packetreceive', (p) => {
  if (p.cmd === 'connack' && p.reasonCode !== 0) {
    say({ event: 'refused', code: p.reasonCode, reason: p.properties?.reasonString });
  }
  if (p.cmd === 'disconnect') {
    say({ event: 'disconnect', code: p.reasonCode, reason: p.properties?.reasonString });
  }
});
client.on('connect', (connack) => {
  connackAt = Date.now();
  const props = connack.properties || {};
  say({
    event: 'connack',
    code: connack.reasonCode,
    data: parse(props.authenticationData),
    expires_in: props.userProperties?.['token-expires-in'],
  });
  if (mode === 'reauth') {
    // MQTT.js has no public call for AUTH 0x19; its own AUTH handling sends packets this way.
    setTimeout(() => client['_sendPacket'](auth(0x19, rest[1])), Number(rest[2] || 0));
  } else {
    client.end(false, () => process.exit(0));
  }
});
client.on('error', () => {});
client.on('close', () => process.exit(0));
setTimeout(() => { say({ event: 'timeout' }); process.exit(1); }, 300000);
