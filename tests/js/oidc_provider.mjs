// A real OpenID provider for Tessera's tests: oidc-provider (OpenID-certified) on loopback
// over HTTPS, issuing access tokens with the client credentials grant and resource indicators:
// JWTs (RFC 9068) for some resources, opaque tokens with introspection and revocation for
// others. Also signs tokens with its key on demand, for the cases a provider would never issue
// (an `nbf` ahead, a token without `exp`), which only the key's holder can make.
//
//   node oidc_provider.mjs keys KID            a private JWKS (RS256 and ES256 keys) on stdout
//   node oidc_provider.mjs serve CONFIG.json   prints "ready ISSUER" once it listens
//   node oidc_provider.mjs sign JWKS.json ALG HEADER.json PAYLOAD.json   a compact JWS
//   node oidc_provider.mjs mint JWKS.json ALG ISSUER AUDIENCE CLIENT N   N access tokens as the
//       provider issues them (RFC 9068, each its own jti), one per line (for load tests)
//
// CONFIG.json: { "port", "cert", "key" (PEM paths), "jwks" (path), "clients": [...],
//   "resources": { "urn:...": { "scope", "audience", "format": "jwt"|"opaque", "ttl", "alg" } } }

import fs from 'node:fs';
import https from 'node:https';
import { exportJWK, generateKeyPair, importJWK, SignJWT } from 'jose';
import Provider, { errors } from 'oidc-provider';

const [, , mode, ...args] = process.argv;
// Whoever started it may stop reading its output: that must not end it.
process.stdout.on('error', () => {});

if (mode === 'keys') {
  const [kid] = args;
  const keys = [];
  for (const alg of ['RS256', 'ES256']) {
    const { privateKey } = await generateKeyPair(alg, { extractable: true });
    const jwk = await exportJWK(privateKey);
    keys.push({ ...jwk, kid: `${kid}-${alg.toLowerCase()}`, alg, use: 'sig' });
  }
  process.stdout.write(JSON.stringify({ keys }));
} else if (mode === 'sign') {
  const [jwksPath, alg, header, payload] = args;
  const { keys } = JSON.parse(fs.readFileSync(jwksPath, 'utf8'));
  const jwk = keys.find((k) => k.alg === alg);
  const key = await importJWK(jwk, alg);
  const token = await new SignJWT(JSON.parse(fs.readFileSync(payload, 'utf8')))
    .setProtectedHeader({ alg, kid: jwk.kid, ...JSON.parse(fs.readFileSync(header, 'utf8')) })
    .sign(key);
  process.stdout.write(token);
} else if (mode === 'mint') {
  const [jwksPath, alg, issuer, audience, client, n] = args;
  const { keys } = JSON.parse(fs.readFileSync(jwksPath, 'utf8'));
  const jwk = keys.find((k) => k.alg === alg);
  const key = await importJWK(jwk, alg);
  const now = Math.floor(Date.now() / 1000);
  const out = [];
  for (let i = 0; i < Number(n); i += 1) {
    out.push(await new SignJWT({ scope: 'mqtt', client_id: client })
      .setProtectedHeader({ alg, kid: jwk.kid, typ: 'at+jwt' })
      .setIssuer(issuer).setAudience(audience).setSubject(client)
      .setIssuedAt(now).setExpirationTime(now + 86400).setJti(`mint-${now}-${i}`)
      .sign(key));
  }
  process.stdout.write(`${out.join('\n')}\n`);
} else if (mode === 'serve') {
  const config = JSON.parse(fs.readFileSync(args[0], 'utf8'));
  const jwks = JSON.parse(fs.readFileSync(config.jwks, 'utf8'));
  const server = https.createServer({
    cert: fs.readFileSync(config.cert),
    key: fs.readFileSync(config.key),
  });
  await new Promise((resolve) => server.listen(config.port || 0, '127.0.0.1', resolve));
  const issuer = `https://localhost:${server.address().port}`;
  const resources = config.resources;
  const provider = new Provider(issuer, {
    clients: config.clients,
    jwks,
    scopes: [...new Set(Object.values(resources).flatMap((r) => r.scope.split(' ')))],
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true, allowedPolicy: async () => true },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => Object.keys(resources)[0],
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, indicator) => {
          const r = resources[indicator];
          if (!r) throw new errors.InvalidTarget();
          const info = {
            scope: r.scope,
            audience: r.audience,
            accessTokenTTL: r.ttl,
            accessTokenFormat: r.format,
          };
          if (r.format === 'jwt') info.jwt = { sign: { alg: r.alg || 'RS256' } };
          return info;
        },
      },
    },
  });
  provider.proxy = false;
  server.on('request', provider.callback());
  process.stdout.write(`ready ${issuer}\n`);
} else {
  process.stderr.write('usage: oidc_provider.mjs keys KID | serve CONFIG | sign JWKS ALG HEADER PAYLOAD\n');
  process.exit(2);
}
