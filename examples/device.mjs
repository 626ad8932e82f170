// A device that never speaks HTTPS: it onboards, refreshes and logs in through MQTT alone
// (X-OAUTH2, docs/in-band.md), with MQTT.js. It keeps only its token pair, in STATE (0600).
//
//   node examples/device.mjs URL OAUTH_CLIENT STATE [--once] [--insecure]
//
// URL: mqtts://host:8883 (or mqtt:// on a loopback listener). --once: exit after CONNACK
// (and a first publish) instead of staying connected. --insecure: accept the broker's
// self-signed development certificate.
//
// First boot (no STATE): CONNECT with the device grant; the broker answers a user code and a
// page, which the device shows; it polls every `interval` seconds until a person approves.
// Steady state: CONNECT with the access token; before it runs out (User Property
// token-expires-in; the device needs no clock), a re-authentication with the refresh token
// gives it a new pair without dropping the session. Back after months offline: the access
// token is refused, the refresh token is tried in CONNECT; if that is refused too (expired,
// revoked), the device forgets both and onboards again.
import fs from 'node:fs';
import mqtt from 'mqtt';

const [url, oauthClient, stateFile, ...flags] = process.argv.slice(2);
const METHOD = 'X-OAUTH2';
const form = (fields) => new URLSearchParams(fields).toString();
const load = () => { try { return JSON.parse(fs.readFileSync(stateFile, 'utf8')); } catch { return null; } };
const save = (pair) => {
  fs.writeFileSync(`${stateFile}.new`, JSON.stringify(pair), { mode: 0o600 });
  fs.renameSync(`${stateFile}.new`, stateFile); // never a half-written pair
};

// What to log in with, in order: the access token, the refresh token, onboarding.
function attempts(state) {
  const refresh = (rt) => form({ grant_type: 'refresh_token', refresh_token: rt, client_id: oauthClient });
  const onboard = form({ grant_type: 'urn:ietf:params:oauth:grant-type:device_code', client_id: oauthClient });
  if (!state) return [['onboarding', onboard]];
  return [['token', state.access_token], ['refresh', refresh(state.refresh_token)], ['onboarding', onboard]];
}

function connect(how, data, state) {
  return new Promise((resolve) => {
    const client = mqtt.connect(url, {
      protocolVersion: 5,
      clientId: `device-${oauthClient}`,
      reconnectPeriod: 0,
      connectTimeout: 15 * 60 * 1000, // a person may take minutes to approve
      rejectUnauthorized: !flags.includes('--insecure'),
      properties: { authenticationMethod: METHOD, authenticationData: Buffer.from(data) },
    });
    let interval = 5;
    let renewal;
    const renewIn = (props) => {
      const left = Number(props?.userProperties?.['token-expires-in']);
      clearTimeout(renewal);
      if (!left || flags.includes('--once')) return;
      renewal = setTimeout(() => client['_sendPacket']({
        cmd: 'auth', reasonCode: 0x19,
        properties: {
          authenticationMethod: METHOD,
          authenticationData: Buffer.from(form({ grant_type: 'refresh_token', refresh_token: state.refresh_token, client_id: oauthClient })),
        },
      }), left * 800); // at 80% of the token's life
    };
    client.handleAuth = (packet, answer) => {
      const body = packet.properties?.authenticationData;
      const json = body ? JSON.parse(body.toString()) : {};
      if (packet.reasonCode === 0) { // a re-authentication done: the new pair
        state = json; save(state); renewIn(packet.properties); answer(null); return;
      }
      if (json.user_code) {
        console.log(`onboarding: open ${json.verification_uri_complete} (code ${json.user_code})`);
        interval = json.interval;
      }
      if (json.error === 'slow_down') interval += 5;
      setTimeout(() => answer(null, { cmd: 'auth', reasonCode: 0x18, properties: { authenticationMethod: METHOD } }), interval * 1000);
    };
    client.on('packetreceive', (p) => {
      if (p.cmd === 'connack' && p.reasonCode !== 0) {
        console.log(`refused (${how}): ${p.properties?.reasonString ?? p.reasonCode}`);
        resolve('refused');
      }
    });
    client.on('connect', (connack) => {
      const body = connack.properties?.authenticationData;
      if (body) { state = JSON.parse(body.toString()); save(state); } // refreshed or onboarded
      console.log(`connected (${how})`);
      renewIn(connack.properties);
      client.publish(`devices/${oauthClient}/hello`, 'up', { qos: 1 }, () => {
        if (flags.includes('--once')) { resolve('done'); client.end(); }
      });
    });
    client.on('error', () => {});
    client.on('close', () => { clearTimeout(renewal); resolve('ended'); });
  });
}

for (;;) {
  for (const [how, data] of attempts(load())) {
    const outcome = await connect(how, data, load());
    if (outcome === 'done') process.exit(0);
    if (outcome === 'ended') break; // was connected (or the network failed): start over
    if (how === 'refresh') fs.rmSync(stateFile, { force: true }); // the pair is dead: onboard
  }
  if (flags.includes('--once')) process.exit(1);
  await new Promise((r) => setTimeout(r, 5000));
}
