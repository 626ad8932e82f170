// MQTT.js completes Tessera's two-step X-OAUTH2 exchange: CONNECT with the method and no data,
// the broker's AUTH 0x18 challenge answered by handleAuth with the token, then CONNACK.
// Usage: node mqttjs_two_step.mjs PORT TOKEN. Prints "ok" and exits 0 after a publish/subscribe
// round trip; exits 1 with the error otherwise.
import mqtt from 'mqtt';

const [port, token] = process.argv.slice(2);
const client = mqtt.connect(`mqtt://127.0.0.1:${port}`, {
  protocolVersion: 5,
  clientId: 'mqttjs-two-step',
  reconnectPeriod: 0,
  connectTimeout: 10000,
  properties: { authenticationMethod: 'X-OAUTH2' },
});
let challenged = false;
client.handleAuth = (packet, callback) => {
  challenged = packet.reasonCode === 0x18 && packet.properties?.authenticationMethod === 'X-OAUTH2';
  callback(null, {
    cmd: 'auth',
    reasonCode: 0x18,
    properties: { authenticationMethod: 'X-OAUTH2', authenticationData: Buffer.from(token) },
  });
};
const fail = (why) => { console.error(String(why)); process.exit(1); };
setTimeout(() => fail('timed out'), 15000);
client.on('error', fail);
client.on('connect', (connack) => {
  if (!challenged) fail('no AUTH challenge before CONNACK');
  if (connack.properties?.authenticationMethod !== 'X-OAUTH2') fail('CONNACK does not echo the method');
  client.subscribe('js/echo', { qos: 1 }, (err) => {
    if (err) fail(err);
    client.publish('js/echo', 'from mqtt.js', { qos: 1 });
  });
});
client.on('message', (topic, payload) => {
  if (topic === 'js/echo' && payload.toString() === 'from mqtt.js') {
    console.log('ok');
    client.end(false, () => process.exit(0));
  }
});
