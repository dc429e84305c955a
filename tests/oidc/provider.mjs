// A real OpenID Connect provider for the oauth2 plugin's tests: panva's
// certified oidc-provider on 127.0.0.1, with its own login and consent
// pages (any login name and password sign in). An account's `sub` and
// preferred_username are its login name, its mail address
// <login>@example.test (verified). Prints "ready" once it listens.
//
//   node tests/oidc/provider.mjs PORT CLIENT_ID CLIENT_SECRET REDIRECT_URI...
import Provider from 'oidc-provider';

// Its notices go to stderr: stdout carries "ready" only, and the test
// stops reading it after that line.
console.log = console.info = console.warn = console.error;

const [port, clientId, clientSecret, ...redirectUris] = process.argv.slice(2);
if (!port || !clientId || !clientSecret || redirectUris.length === 0) {
  console.error('usage: provider.mjs PORT CLIENT_ID CLIENT_SECRET REDIRECT_URI...');
  process.exit(2);
}

const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: redirectUris,
    grant_types: ['authorization_code'],
    response_types: ['code'],
  }],
  cookies: { keys: ['plughost-test-oidc-provider-cookie-key'] },
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    email: ['email', 'email_verified'],
  },
  pkce: { required: () => true },
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        return {
          sub: id,
          preferred_username: id,
          name: `Test ${id}`,
          email: `${id}@example.test`,
          email_verified: true,
        };
      },
    };
  },
});
provider.listen(Number(port), '127.0.0.1', () => {
  process.stdout.write('ready\n');
});
