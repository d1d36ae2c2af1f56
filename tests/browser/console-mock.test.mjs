// The web console in headless Chromium against a mocked admin API (page.route): every page
// renders without console errors, at 1280x800 and at 375x812 without horizontal scrolling, and
// the main interactions send what docs/ADMIN-API.md says. Needs no broker:
//   node --test tests/browser/console-mock.test.mjs
// (CHROMIUM overrides /usr/bin/chromium.)
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const consoleDir = join(here, '..', '..', 'crates', 'moat-admin', 'console');
const ORIGIN = 'http://moat.test';
const T = 20_000;

const assets = {
  '/': ['text/html; charset=utf-8', readFileSync(join(consoleDir, 'index.html'))],
  '/assets/app.js': ['text/javascript; charset=utf-8', readFileSync(join(consoleDir, 'app.js'))],
  '/assets/app.css': ['text/css; charset=utf-8', readFileSync(join(consoleDir, 'app.css'))],
};

const day = 86400e3;
const iso = (ms) => new Date(Date.now() + ms).toISOString();
const cert = (subject, fp, days, extra = {}) => ({
  subject, sans: ['localhost', '127.0.0.1'], issuer: 'CN=Test CA', serial: '0a1b2c',
  not_before: iso(-day), not_after: iso(days * day), days_left: days, key_type: 'P-256',
  fingerprint_sha256: fp, is_ca: false, ...extra,
});

// Forwarding rules in each state the console shows: up, down, down with a full spool.
const forwardRules = () => [
  { rule: 'telemetry', filters: ['devices/+/telemetry'], sink: 'db (postgres 127.0.0.1:5432/iot) table telemetry', state: 'up',
    spooled: 0, spooled_bytes: 0, oldest_age_seconds: 0, forwarded: 123456, retries: 0, dropped_qos0: 0, full: false },
  { rule: 'events', filters: ['devices/+/events/#', 'alarms/<b>bold</b>'], sink: 'queue (jetstream nats://127.0.0.1:4222) stream MOAT_EVENTS', state: 'down',
    spooled: 1520, spooled_bytes: 3250000, oldest_age_seconds: 185, forwarded: 9000, retries: 7, dropped_qos0: 0, full: false },
  { rule: 'archive', filters: ['#'], sink: 'db (postgres 127.0.0.1:5432/iot) table archive', state: 'down',
    spooled: 1000000, spooled_bytes: 1073741824, oldest_age_seconds: 7400, forwarded: 5, retries: 311, dropped_qos0: 42, full: true },
];

// A stateful fake of the API: enough to walk every page.
function makeState() {
  return {
    forward: forwardRules(),
    forwardError: false,
    role: 'admin',
    loggedIn: false,
    requests: [],
    pending: null,
    users: [{ username: 'alice', scheme: 'argon2id' }],
    acl: 'default = "allow"\n',
    clients: Array.from({ length: 120 }, (_, i) => ({
      client_id: `dev-${String(i).padStart(4, '0')}`, username: i % 2 ? 'alice' : null, listener: i % 3 ? 'tcp' : 'mqtts',
      address: `127.0.0.1:${40000 + i}`, protocol: '5.0', connected_at: iso(-3600e3), keep_alive: 60,
      subscriptions: 1, queued: 0, inflight: 0,
      tls: i % 3 ? null : { version: 'TLSv1.3', identity: `dev-${i}`, subject: `CN=dev-${i}`, fingerprint: 'ab'.repeat(32), not_after: iso(200 * day) },
    })),
  };
}

function certSet(s) {
  return {
    id: 'mqtts', listeners: ['mqtts', 'wss'], state: 'active', client_auth: 'optional',
    certificate: cert('CN=localhost', 'aa11'.repeat(16), 300),
    chain: [], client_ca: [cert('CN=Test CA', 'cc'.repeat(32), 3000, { is_ca: true })],
    crls: [{ issuer: 'CN=Test CA', next_update: iso(5 * day), revoked: 2 }],
    warnings: [], pending: s.pending, previous: true, connected_clients: 3,
  };
}

async function handle(route, s) {
  const req = route.request();
  const u = new URL(req.url());
  const method = req.method();
  const path = u.pathname;
  const json = (status, body, headers = {}) => route.fulfill({ status, contentType: 'application/json', headers, body: JSON.stringify(body) });
  const err = (status, code, message, more = {}) => json(status, { error: { code, message, ...more } });
  if (assets[path] && method === 'GET') {
    const [type, body] = assets[path];
    return route.fulfill({ status: 200, contentType: type, body });
  }
  if (!path.startsWith('/api/v1/')) return route.fulfill({ status: 404, body: 'not found' });
  s.requests.push({ method, path, search: u.search, headers: req.headers(), body: req.postData() });
  if (method !== 'GET' && path !== '/api/v1/login' && req.headers()['x-csrf-token'] !== 'csrf-123') {
    return err(403, 'csrf', 'missing X-CSRF-Token');
  }
  const p = path.slice('/api/v1/'.length);
  if (p === 'login') {
    const { token } = JSON.parse(req.postData() || '{}');
    if (token === 'good') { s.loggedIn = true; return json(200, { role: s.role, csrf: 'csrf-123' }); }
    return err(401, 'bad_token', 'The token is not valid.', { fix: 'Copy it again from admin.token.' });
  }
  if (!s.loggedIn) return err(401, 'unauthenticated', 'Log in first.');
  if (p === 'session') return json(200, { role: s.role, csrf: 'csrf-123' });
  if (p === 'logout') { s.loggedIn = false; return route.fulfill({ status: 204 }); }
  if (p === 'overview') {
    return json(200, {
      version: '0.1.0', uptime_secs: 4000, connections: { total: 3, by_listener: { mqtts: 2, tcp: 1 } },
      messages: { received: 10, sent: 9, received_per_sec: 1.5, sent_per_sec: 1.25 }, sessions: 4, subscriptions: 5, retained: 1,
      handshake_failures: { by_reason: { unknown_ca: 2, certificate_expired: 1 }, recent: [{ at: iso(-60e3), listener: 'mqtts', peer: '127.0.0.1:5555', reason: 'unknown_ca', detail: 'issuer CN=Other CA is not trusted <script>alert(1)</script>' }] },
      expiry: [{ kind: 'crl_next_update', certificate_set: 'mqtts', client_id: null, subject: 'CN=Test CA', not_after: iso(5 * day), seconds_left: 5 * 86400, days_left: 5, level: '7d' }],
    });
  }
  if (p === 'listeners') {
    return json(200, [
      { name: 'tcp', kind: 'tcp', address: '127.0.0.1:1883', certificate_set: null, connections: 1 },
      { name: 'mqtts', kind: 'tls', address: '127.0.0.1:8883', certificate_set: 'mqtts', connections: 2 },
      { name: 'wss', kind: 'wss', address: '127.0.0.1:8084', certificate_set: 'mqtts', connections: 1 },
    ]);
  }
  if (p === 'certificates') return json(200, [certSet(s)]);
  if (p === 'certificates/mqtts/pending' && method === 'PUT') {
    const type = req.headers()['content-type'] || '';
    const body = req.postData() || '';
    if (body.includes('EXPIRED')) {
      return err(422, 'certificate_refused', 'The certificate set was refused.', { fix: 'Fix the findings and upload again.', findings: [
        { code: 'cert-expired', severity: 'error', message: 'the certificate expired <b>3 years</b> ago', fix: 'reissue', file: 'cert' },
        { code: 'key-rsa-weak', severity: 'error', message: 'RSA 1024', fix: 'use p256', file: 'cert' },
        { code: 'key-mismatch', severity: 'error', message: 'the key does not belong to the certificate', fix: 'use the right key', file: 'key' },
      ] });
    }
    s.pending = {
      certificate: cert('CN=localhost', 'bb22'.repeat(16), 397), chain: [], client_ca: [], client_auth: 'optional',
      warnings: [{ code: 'chain-has-root', severity: 'info', message: 'root in chain', fix: 'none needed' }],
      notes: type.startsWith('multipart/') ? [] : ['the certificate field held 2 certificates: the leaf was kept and 1 was split off into the chain'],
      uploaded_at: iso(0),
    };
    return json(200, s.pending);
  }
  if (p === 'certificates/mqtts/pending' && method === 'DELETE') { s.pending = null; return route.fulfill({ status: 204 }); }
  if (p === 'certificates/mqtts/activate') { s.pending = null; return json(200, { activated: true, listeners: ['mqtts', 'wss'], test_handshake: [{ listener: 'mqtts', ok: true }, { listener: 'wss', ok: true }], warnings: [] }); }
  if (p === 'certificates/mqtts/restore') return json(200, { activated: true, listeners: ['mqtts', 'wss'], test_handshake: [{ listener: 'mqtts', ok: true }], warnings: [] });
  if (p === 'certificates/mqtts/delete-preview') return json(200, { listeners: [{ name: 'mqtts', clients: 1 }, { name: 'wss', clients: 1 }], total: 2 });
  if (p === 'certificates/mqtts' && method === 'DELETE') return json(200, { listeners: [{ name: 'mqtts', clients: 1 }, { name: 'wss', clients: 1 }], total: 2 });
  if (p === 'expiry') {
    return json(200, ['expired', '1d', '7d', '30d', 'ok'].map((level, i) => ({
      kind: ['server', 'chain', 'client_ca', 'crl_next_update', 'client'][i], certificate_set: i === 4 ? null : 'mqtts', client_id: i === 4 ? 'dev-1' : null,
      subject: `CN=item-${level}`, not_after: iso([-2, 0.5, 5, 20, 200][i] * day), seconds_left: 0, days_left: [-2, 0, 5, 20, 200][i], level,
    })));
  }
  if (p === 'clients') {
    const q = u.searchParams;
    const limit = Number(q.get('limit') || 50);
    let items = s.clients.filter((c) => c.client_id.startsWith(q.get('prefix') || ''));
    if (q.get('after')) items = items.filter((c) => c.client_id > q.get('after'));
    return json(200, { items: items.slice(0, limit), more: items.length > limit });
  }
  if (p.startsWith('clients/')) {
    const [, id, action] = p.split('/');
    const c = s.clients.find((x) => x.client_id === decodeURIComponent(id));
    if (!c) return err(404, 'no_client', 'No such client.');
    if (action === 'disconnect') { s.clients = s.clients.filter((x) => x !== c); return json(200, { disconnected: true }); }
    return json(200, { client_id: c.client_id, connected: c, subscriptions: [{ filter: 'sensors/#', qos: 1, no_local: false, retain_as_published: false, retain_handling: 0 }], queued: 0, queued_bytes: 0, inflight: 0, expiry_secs: null });
  }
  if (p === 'users' && method === 'GET') return json(200, s.users);
  if (p === 'users' && method === 'POST') {
    const b = JSON.parse(req.postData());
    if (s.users.some((x) => x.username === b.username)) return err(409, 'user_exists', 'That user exists.');
    s.users.push({ username: b.username, scheme: 'argon2id' });
    return json(201, {});
  }
  if (p.startsWith('users/') && p.endsWith('/password')) return route.fulfill({ status: 204 });
  if (p.startsWith('users/') && method === 'DELETE') {
    const name = decodeURIComponent(p.split('/')[1]);
    s.users = s.users.filter((x) => x.username !== name);
    return route.fulfill({ status: 204 });
  }
  if (p === 'acl' && method === 'GET') return json(200, { path: 'moat-data/acl.toml', text: s.acl, rules: 0 });
  if (p === 'acl' && method === 'PUT') {
    const { text } = JSON.parse(req.postData());
    if (text.includes('fly')) return err(422, 'invalid_acl', 'The ACL has errors.', { errors: [{ line: 3, message: 'unknown action "fly"' }] });
    s.acl = text;
    return json(200, { rules: 1 });
  }
  if (p === 'retained' && method === 'GET') return json(200, { items: [{ topic: 'a/b', qos: 1, size: 5, payload: 'hello', payload_base64: 'aGVsbG8=' }, { topic: 'a/bin', qos: 0, size: 3, payload: null, payload_base64: 'AAEC' }], more: false });
  if (p === 'retained' && method === 'DELETE') return json(200, { deleted: true });
  if (p === 'forward') {
    if (s.forwardError) return err(503, 'stopped', 'The broker is shutting down.');
    return json(200, s.forward);
  }
  if (p === 'audit') return json(200, [{ at: iso(0), who: 'admin', address: '127.0.0.1', action: 'POST /api/v1/login', result: 'ok' }]);
  return err(404, 'not_found', `no mock for ${method} ${path}`);
}

let browser;
before(async () => {
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: ['--no-sandbox'] });
});
after(async () => { await browser?.close(); });

async function open(viewport, state) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.setDefaultTimeout(T);
  const problems = [];
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  await page.route(`${ORIGIN}/**`, (route) => handle(route, state));
  return { context, page, problems };
}

async function login(page) {
  await page.goto(`${ORIGIN}/`);
  await page.getByLabel('Access token').fill('good');
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.getByRole('heading', { level: 1, name: 'Overview' }).waitFor();
}

const ROUTES = ['overview', 'certificates', 'expiry', 'clients', 'forwarding', 'users', 'acl', 'retained', 'audit'];

for (const [label, viewport] of [['desktop', { width: 1280, height: 800 }], ['phone', { width: 375, height: 812 }]]) {
  test(`every page renders without errors (${label})`, async () => {
    const s = makeState();
    const { context, page, problems } = await open(viewport, s);
    try {
      await page.goto(`${ORIGIN}/`);
      await page.getByLabel('Access token').fill('wrong');
      await page.getByRole('button', { name: 'Log in' }).click();
      await page.getByTestId('error').getByText('The token is not valid.').waitFor();
      // The 401 of a wrong token is an expected failed request; forget the console's note of it.
      problems.length = 0;
      await page.getByLabel('Access token').fill('good');
      await page.getByRole('button', { name: 'Log in' }).click();
      await page.getByRole('heading', { level: 1, name: 'Overview' }).waitFor();
      assert.match(await page.getByTestId('role').textContent(), /admin/);
      for (const r of ROUTES) {
        await page.goto(`${ORIGIN}/#/${r}`);
        await page.locator('main h1').waitFor();
        await page.waitForLoadState('networkidle');
        const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
        assert.ok(overflow <= 0, `${r} at ${label}: the page scrolls sideways by ${overflow}px`);
        // Every form control has a label.
        const unlabelled = await page.evaluate(() => [...document.querySelectorAll('input, select, textarea')]
          .filter((el) => el.type !== 'hidden' && !(el.labels && el.labels.length) && !el.getAttribute('aria-label'))
          .map((el) => el.outerHTML.slice(0, 80)));
        assert.deepEqual(unlabelled, [], `${r}: inputs without a label`);
        if (process.env.SCREENSHOTS_MOCK) {
          await page.screenshot({ path: join(process.env.SCREENSHOTS_MOCK, `${r}-${label}.png`), fullPage: true });
        }
      }
      // API strings are text, never markup.
      await page.goto(`${ORIGIN}/#/overview`);
      await page.getByTestId('overview-recent-failures').waitFor();
      assert.equal(await page.locator('main script').count(), 0);
      assert.match(await page.getByTestId('overview-recent-failures').textContent(), /<script>alert\(1\)<\/script>/);
      assert.deepEqual(problems, []);
    } finally {
      await context.close();
    }
  });
}

test('certificate set: stage by paste (note), refuse (findings), activate, delete dialog', async () => {
  const s = makeState();
  const { context, page, problems } = await open({ width: 1280, height: 800 }, s);
  try {
    await login(page);
    await page.goto(`${ORIGIN}/#/certificates`);
    const set = page.getByTestId('certset-mqtts');
    await set.waitFor();
    assert.match(await set.getByTestId('cert-fingerprint').textContent(), /AA:11:AA:11/);
    // Paste a bundle: JSON body, the split note is shown.
    await set.getByTestId('upload').locator('summary').click();
    await set.getByTestId('paste-cert').fill('-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----');
    await set.getByTestId('paste-key').fill('-----BEGIN PRIVATE KEY-----\nK\n-----END PRIVATE KEY-----');
    await set.getByRole('button', { name: 'Check and stage' }).click();
    await set.getByTestId('note').first().waitFor();
    assert.match(await set.getByTestId('set-result').textContent(), /split/);
    const put = s.requests.findLast((r) => r.method === 'PUT');
    assert.equal(put.headers['content-type'], 'application/json');
    assert.equal(put.headers['x-csrf-token'], 'csrf-123');
    const body = JSON.parse(put.body);
    assert.ok(body.cert.includes('B\n-----END') && body.key.includes('PRIVATE KEY'));
    assert.equal(body.client_auth, 'optional');
    assert.ok(!('chain' in body));
    await set.getByTestId('pending').waitFor();
    // Files: multipart.
    await set.getByTestId('upload').locator('summary').click();
    await set.getByTestId('file-cert').setInputFiles({ name: 'server.pem', mimeType: 'application/x-pem-file', buffer: Buffer.from('-----BEGIN CERTIFICATE-----\nC\n-----END CERTIFICATE-----\n') });
    await set.getByTestId('file-key').setInputFiles({ name: 'server.key', mimeType: 'application/x-pem-file', buffer: Buffer.from('KEY') });
    await set.getByTestId('client-auth-required').check();
    await set.getByRole('button', { name: 'Check and stage' }).click();
    await set.getByTestId('stage-result').waitFor();
    const mp = s.requests.findLast((r) => r.method === 'PUT');
    assert.match(mp.headers['content-type'], /^multipart\/form-data; boundary=/);
    assert.match(mp.body, /name="cert"; filename="server.pem"/);
    assert.match(mp.body, /name="client_auth"\r\n\r\nrequired/);
    // Refused: each finding with its code, the fact and the fix.
    await set.getByTestId('upload').locator('summary').click();
    await set.getByTestId('paste-cert').fill('EXPIRED');
    await set.getByRole('button', { name: 'Check and stage' }).click();
    await set.getByTestId('stage-refused').waitFor();
    const codes = await set.getByTestId('set-result').getByTestId('finding').evaluateAll((rows) => rows.map((r) => r.dataset.code));
    assert.deepEqual(codes, ['cert-expired', 'key-rsa-weak', 'key-mismatch']);
    assert.match(await set.getByTestId('set-result').getByTestId('finding').first().textContent(), /<b>3 years<\/b>/);
    // Activate the staged set.
    await set.getByRole('button', { name: 'Activate' }).click();
    await set.getByTestId('activation-result').waitFor();
    assert.match(await set.getByTestId('activation-result').textContent(), /Activated on mqtts, wss/);
    // Delete: the dialog names the clients per listener; Escape cancels, confirm deletes.
    await set.getByRole('button', { name: 'Delete…' }).click();
    const dlg = page.getByRole('dialog');
    await dlg.waitFor();
    assert.equal(await dlg.getAttribute('aria-modal'), 'true');
    assert.match(await dlg.getByTestId('delete-impact').textContent(), /^2 clients on listeners mqtts \(1\), wss \(1\) will be disconnected\.$/);
    await page.keyboard.press('Escape');
    await dlg.waitFor({ state: 'detached' });
    assert.ok(!s.requests.some((r) => r.method === 'DELETE' && r.path === '/api/v1/certificates/mqtts'));
    await set.getByRole('button', { name: 'Delete…' }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Delete and disconnect' }).click();
    await set.getByTestId('delete-result').waitFor();
    assert.match(await set.getByTestId('delete-result').textContent(), /2 clients disconnected/);
    await set.getByRole('button', { name: 'Restore previous' }).click();
    await set.getByTestId('activation-result').waitFor();
    assert.deepEqual(problems.filter((p) => !/status of (401|422)/.test(p)), []);
  } finally {
    await context.close();
  }
});

test('clients: paging, debounced filter, detail, disconnect; users; ACL errors; viewer', async () => {
  const s = makeState();
  const { context, page, problems } = await open({ width: 375, height: 812 }, s);
  try {
    await login(page);
    await page.goto(`${ORIGIN}/#/clients`);
    await page.getByTestId('client-row').first().waitFor();
    assert.equal(await page.getByTestId('client-row').count(), 50);
    await page.getByRole('button', { name: 'Next page' }).click();
    await page.locator('[data-client-id="dev-0050"]').waitFor();
    assert.ok(s.requests.some((r) => r.path === '/api/v1/clients' && r.search.includes('after=dev-0049')));
    await page.getByRole('button', { name: 'First page' }).click();
    await page.locator('[data-client-id="dev-0000"]').waitFor();
    const before = s.requests.filter((r) => r.path === '/api/v1/clients').length;
    await page.getByLabel('Client id starts with').pressSequentially('dev-011', { delay: 20 });
    await page.locator('[data-client-id="dev-0119"]').waitFor();
    await page.getByText('Page 1: 10 clients.').waitFor();
    const after = s.requests.filter((r) => r.path === '/api/v1/clients').length;
    assert.equal(after - before, 1, 'typing is debounced into one request');
    await page.locator('[data-client-id="dev-0111"]').getByRole('button').click();
    const detail = page.getByTestId('client-detail');
    await detail.getByText('sensors/#').waitFor();
    await detail.getByRole('button', { name: 'Disconnect…' }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Disconnect' }).click();
    await detail.getByTestId('disconnect-result').waitFor();
    await page.getByText('Page 1: 9 clients.').waitFor();

    await page.goto(`${ORIGIN}/#/users`);
    await page.getByLabel('User name').fill('bob');
    await page.getByLabel('Password', { exact: true }).fill('s3cret');
    await page.getByRole('button', { name: 'Add user' }).click();
    await page.locator('[data-username="bob"]').waitFor();
    await page.getByRole('button', { name: 'Add user' }).click();
    await page.getByTestId('error').waitFor();
    await page.locator('[data-username="bob"]').getByRole('button', { name: 'Change password…' }).click();
    await page.getByRole('dialog').getByLabel('New password').fill('n3w');
    await page.getByRole('dialog').getByRole('button', { name: 'Change password' }).click();
    await page.getByText('The password of bob was changed.').waitFor();
    await page.locator('[data-username="bob"]').getByRole('button', { name: 'Remove…' }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Remove' }).click();
    await page.locator('[data-username="bob"]').waitFor({ state: 'detached' });

    await page.goto(`${ORIGIN}/#/acl`);
    await page.getByTestId('acl-text').fill('default = "deny"\n[[rule]]\naction = "fly"\n');
    await page.getByRole('button', { name: 'Save' }).click();
    await page.getByTestId('acl-errors').waitFor();
    assert.equal(await page.getByTestId('acl-errors').textContent(), 'line 3: unknown action "fly"');
    await page.getByTestId('acl-text').fill('default = "deny"\n');
    await page.getByRole('button', { name: 'Save' }).click();
    await page.getByTestId('acl-saved').waitFor();

    // A viewer sees no change buttons.
    s.role = 'viewer';
    await page.getByRole('button', { name: 'Log out' }).click();
    await page.getByLabel('Access token').waitFor();
    await login(page);
    assert.match(await page.getByTestId('role').textContent(), /viewer/);
    assert.equal(await page.getByRole('link', { name: 'Audit' }).isVisible(), false);
    await page.goto(`${ORIGIN}/#/certificates`);
    await page.getByTestId('certset-mqtts').waitFor();
    assert.equal(await page.getByRole('button', { name: /Delete|Activate|Check and stage|Restore/ }).count(), 0);
    await page.goto(`${ORIGIN}/#/users`);
    await page.getByTestId('users-table').waitFor();
    assert.equal(await page.getByRole('button', { name: /Add user|Remove|Change password/ }).count(), 0);
    // A 401 (session ended) goes back to the login page.
    s.loggedIn = false;
    await page.goto(`${ORIGIN}/#/expiry`);
    await page.getByLabel('Access token').waitFor();
    assert.deepEqual(problems.filter((p) => !/status of (401|409|422)/.test(p)), []);
  } finally {
    await context.close();
  }
});

test('forwarding: up, down and full rules, the overview tile, auto-refresh, errors, the empty state', async () => {
  const s = makeState();
  const { context, page, problems } = await open({ width: 375, height: 812 }, s);
  try {
    await login(page);
    // The overview sums it up and links to the page.
    const ovTile = page.getByTestId('overview-forwarding');
    await ovTile.waitFor();
    assert.match(await ovTile.textContent(), /3 rules/);
    assert.match(await ovTile.textContent(), /2 sinks down, 1 spool full/);
    await ovTile.getByRole('link').click();
    await page.getByRole('heading', { level: 1, name: 'Forwarding' }).waitFor();
    assert.equal(await page.locator('#nav a[aria-current="page"]').textContent(), 'Forwarding');

    const rule = (name) => page.locator(`[data-testid="forward-rule"][data-rule="${name}"]`);
    await rule('archive').waitFor();
    assert.deepEqual(await page.getByTestId('forward-rule').evaluateAll((els) => els.map((e) => e.dataset.rule)),
      ['telemetry', 'events', 'archive'], 'configuration order');
    assert.equal(await page.getByTestId('forward-summary').textContent(), '3 rules, 2 sinks down, 1 spool full');

    // Up: the state in words, no warning.
    const up = rule('telemetry');
    assert.equal(await up.getByTestId('forward-state').getAttribute('data-state'), 'up');
    assert.match(await up.getByTestId('forward-state').textContent(), /Sink up/);
    assert.equal(await up.getByTestId('forward-down').count(), 0);
    assert.equal(await up.getByTestId('forward-full').count(), 0);
    assert.match(await up.getByTestId('forward-forwarded').textContent(), /123,456/);
    assert.match(await up.getByTestId('forward-oldest').textContent(), /nothing waits/);
    assert.match(await up.getByTestId('forward-sink').textContent(), /postgres 127\.0\.0\.1:5432\/iot/);

    // Down: the warning, the spool in messages and bytes, its age, the retries.
    const down = rule('events');
    assert.match(await down.getByTestId('forward-state').textContent(), /Sink down/);
    assert.match(await down.getByTestId('forward-down').textContent(), /The sink is down/);
    assert.equal(await down.getByTestId('forward-full').count(), 0);
    assert.match(await down.getByTestId('forward-spooled').textContent(), /^Spooled1,520 messages, 3\.1 MiB$/);
    assert.match(await down.getByTestId('forward-oldest').textContent(), /3 min 5 s/);
    assert.match(await down.getByTestId('forward-retries').textContent(), /7/);
    // API strings are text, never markup.
    assert.match(await down.getByTestId('forward-filters').textContent(), /alarms\/<b>bold<\/b>/);
    assert.equal(await down.locator('b').count(), 0);

    // Full: publishers are slowed, QoS 0 dropped counted.
    const full = rule('archive');
    assert.match(await full.getByTestId('forward-full').textContent(), /publishers are being slowed: acknowledgements held/);
    assert.match(await full.getByTestId('forward-full-badge').textContent(), /Spool full/);
    assert.match(await full.getByTestId('forward-spooled').textContent(), /1,000,000 messages, 1\.0 GiB/);
    assert.match(await full.getByTestId('forward-oldest').textContent(), /2 h 3 min/);
    assert.match(await full.getByTestId('forward-dropped').textContent(), /42/);

    // The page refreshes by itself: the sinks come back.
    s.forward = forwardRules().map((r) => ({ ...r, state: 'up', full: false, spooled: 0, spooled_bytes: 0, oldest_age_seconds: 0 }));
    await page.locator('[data-testid="forward-rule"][data-rule="archive"][data-state="up"]').waitFor();
    await page.getByTestId('forward-summary').getByText('3 rules, all sinks up').waitFor();
    assert.equal(await page.getByTestId('forward-full').count(), 0);
    assert.equal(await page.getByTestId('forward-down').count(), 0);

    // An error is shown with its code; the last rules stay on the page.
    s.forwardError = true;
    await page.getByTestId('error-code').getByText('stopped').waitFor();
    assert.equal(await page.getByTestId('forward-rule').count(), 3);
    s.forwardError = false;
    await page.getByTestId('error').waitFor({ state: 'detached' });

    // No rule: how to configure forwarding, and no tile on the overview.
    s.forward = [];
    const empty = page.getByTestId('forward-empty');
    await empty.waitFor();
    assert.match(await empty.textContent(), /\[\[forward\.rules\]\]/);
    assert.match(await empty.textContent(), /moat\.toml/);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    assert.ok(overflow <= 0, `the empty state scrolls sideways by ${overflow}px`);
    await page.goto(`${ORIGIN}/#/overview`);
    await page.getByTestId('overview-connections').waitFor();
    assert.equal(await page.getByTestId('overview-forwarding').count(), 0);
    assert.deepEqual(problems.filter((p) => !/status of (401|503)/.test(p)), []);
  } finally {
    await context.close();
  }
});
