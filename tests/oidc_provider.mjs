// tests/oidc_provider.mjs — a real OpenID provider (npm `oidc-provider`, installed by tests/ensure-services.sh)
// on a loopback port, for the OIDC tests. Started by tests/src/oidc.rs:
//
//   DG_OIDC_PROVIDER_MODULE=<path to node_modules/oidc-provider>  (ES modules ignore NODE_PATH)
//   DG_OIDC_PORT=<port, 0: any free one>                           node tests/oidc_provider.mjs
//
// It prints `listening on http://127.0.0.1:PORT` once it serves. Signing keys (RSA, P-256, Ed25519) are made
// fresh at every start, with fresh key ids: restarting on the same port is a key rotation with the same issuer.
//
// Clients (all public, PKCE, device flow and authorization code, redirect http://127.0.0.1/callback), one per
// ID-token signing algorithm, plus a short-lived one and an unrelated application for audience tests:
//   dg-cli (RS256), dg-cli-ps256, dg-cli-es256, dg-cli-eddsa, dg-cli-short (RS256, ID token lives 2 s), other-app
// Accounts (the dev login form takes any password): see ACCOUNTS.
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import { pathToFileURL } from 'node:url';
import { join } from 'node:path';

const moduleDir = process.env.DG_OIDC_PROVIDER_MODULE;
if (!moduleDir) {
  console.error('DG_OIDC_PROVIDER_MODULE is not set');
  process.exit(2);
}
const { default: Provider } = await import(pathToFileURL(join(moduleDir, 'lib', 'index.js')).href);

const REDIRECT_URI = 'http://127.0.0.1/callback';

// Fixed test accounts: the login name is the account id (`sub`).
const ACCOUNTS = {
  alice: { preferred_username: 'alice', email: 'alice@example.test', groups: ['dg-admins', 'staff'] },
  // A single group as a string, not an array.
  bob: { preferred_username: 'bob', email: 'bob@example.test', groups: 'dg-operators' },
  // No group the controller maps.
  carol: { preferred_username: 'carol', email: 'carol@example.test', groups: ['staff'] },
  // No preferred_username: the username falls back to the email.
  dave: { email: 'dave@example.test', groups: ['dg-viewers'] },
};

function key(type, options, kid) {
  const { privateKey } = generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), kid: `${kid}-${randomUUID().slice(0, 8)}`, use: 'sig' };
}

const keys = [
  key('rsa', { modulusLength: 2048 }, 'rsa'),
  key('ec', { namedCurve: 'P-256' }, 'ec'),
  key('ed25519', {}, 'ed'),
];

const client = (clientId, alg) => ({
  client_id: clientId,
  application_type: 'native',
  token_endpoint_auth_method: 'none',
  grant_types: ['authorization_code', 'urn:ietf:params:oauth:grant-type:device_code'],
  response_types: ['code'],
  redirect_uris: [REDIRECT_URI],
  id_token_signed_response_alg: alg,
});

const server = createServer();
const port = Number(process.env.DG_OIDC_PORT || 0);
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, '127.0.0.1', resolve);
});
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: [
    client('dg-cli', 'RS256'),
    client('dg-cli-ps256', 'PS256'),
    client('dg-cli-es256', 'ES256'),
    client('dg-cli-eddsa', 'EdDSA'),
    client('dg-cli-short', 'RS256'),
    client('other-app', 'RS256'),
  ],
  jwks: { keys },
  cookies: { keys: ['dg-test-cookie-key-not-secret'] },
  claims: {
    openid: ['sub'],
    profile: ['preferred_username', 'groups'],
    email: ['email', 'email_verified'],
  },
  // Scope claims go into the ID token even though an access token is issued beside it.
  conformIdTokenClaims: false,
  features: {
    devInteractions: { enabled: true },
    deviceFlow: { enabled: true },
  },
  pkce: { required: () => true },
  async findAccount(ctx, id) {
    const account = ACCOUNTS[id];
    if (!account) return undefined;
    return { accountId: id, claims: async () => ({ sub: id, email_verified: true, ...account }) };
  },
  ttl: {
    AccessToken: 600,
    AuthorizationCode: 60,
    DeviceCode: 600,
    Grant: 600,
    IdToken: (ctx, token, c) => (c.clientId === 'dg-cli-short' ? 2 : 600),
    Interaction: 600,
    Session: 600,
  },
});

server.on('request', provider.callback());
console.log(`listening on ${issuer}`);

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
