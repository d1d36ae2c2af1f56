// Moat web console: plain JavaScript, no framework, no build step.
// Built to docs/ADMIN-API.md. Every string from the API goes into the page as text
// (textContent, attribute values), never as HTML.
'use strict';

(() => {
  const API = '/api/v1';
  const REFRESH_MS = 5000;
  const DEBOUNCE_MS = 300;

  // ---------------------------------------------------------------- session state

  const session = {
    role: null,
    csrf: null,
    load() {
      try {
        this.role = sessionStorage.getItem('moat.role');
        this.csrf = sessionStorage.getItem('moat.csrf');
      } catch (_) { /* storage unavailable: memory only */ }
    },
    set(role, csrf) {
      this.role = role;
      this.csrf = csrf;
      try {
        sessionStorage.setItem('moat.role', role);
        sessionStorage.setItem('moat.csrf', csrf);
      } catch (_) { /* memory only */ }
    },
    clear() {
      this.role = null;
      this.csrf = null;
      try {
        sessionStorage.removeItem('moat.role');
        sessionStorage.removeItem('moat.csrf');
      } catch (_) { /* memory only */ }
    },
    get isAdmin() { return this.role === 'admin'; },
  };

  // ---------------------------------------------------------------- API access

  class ApiError extends Error {
    constructor(status, body) {
      const e = (body && body.error) || {};
      super(e.message || `The server answered ${status}.`);
      this.status = status;
      this.code = e.code || `http_${status}`;
      this.fix = e.fix || '';
      this.findings = Array.isArray(e.findings) ? e.findings : [];
      this.errors = Array.isArray(e.errors) ? e.errors : [];
      this.retryAfter = null;
    }
  }

  // api(method, path, body): body is an object (sent as JSON), a FormData (multipart) or
  // undefined. Answers the parsed JSON, or null for 204. Throws ApiError.
  async function api(method, path, body) {
    const headers = { Accept: 'application/json' };
    const init = { method, headers, credentials: 'same-origin', cache: 'no-store' };
    if (method !== 'GET' && method !== 'HEAD' && session.csrf) {
      headers['X-CSRF-Token'] = session.csrf;
    }
    if (body instanceof FormData) {
      init.body = body;
    } else if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path.startsWith('/') ? path : `${API}/${path}`, init);
    } catch (err) {
      const e = new ApiError(0, { error: {
        code: 'network',
        message: 'The console cannot reach the broker.',
        fix: 'Check that `moat serve` is running and that this address is its admin address.',
      } });
      e.cause = err;
      throw e;
    }
    if (res.status === 204) return null;
    let data = null;
    const text = await res.text();
    if (text) {
      try { data = JSON.parse(text); } catch (_) { data = null; }
    }
    if (!res.ok) {
      const e = new ApiError(res.status, data);
      if (res.status === 429) e.retryAfter = res.headers.get('Retry-After');
      if (res.status === 401 && !path.endsWith('/login') && !path.endsWith('/session')) {
        session.clear();
        if (current.name !== 'login') {
          announce('Your session has ended. Please log in again.');
          go('login');
        }
      }
      throw e;
    }
    return data;
  }
  const url = (path, params) => {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {})) {
      if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
    }
    const s = q.toString();
    return `${API}/${path}${s ? `?${s}` : ''}`;
  };
  const enc = encodeURIComponent;

  // ---------------------------------------------------------------- DOM helpers

  // h('tag', {attr: value, onclick: fn, ...}, child, ...): children are nodes or text
  // (strings and numbers become text nodes; null/false are skipped; arrays are flattened).
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith('on') && typeof v === 'function') {
        el.addEventListener(k.slice(2), v);
      } else if (k === 'class') {
        el.className = v;
      } else if (k === 'value' || k === 'checked' || k === 'disabled' || k === 'readOnly') {
        el[k] = v;
      } else if (k === 'text') {
        el.textContent = String(v);
      } else {
        el.setAttribute(k, v === true ? '' : String(v));
      }
    }
    append(el, children);
    return el;
  }
  function append(el, children) {
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      if (Array.isArray(c)) append(el, c);
      else if (c instanceof Node) el.appendChild(c);
      else el.appendChild(document.createTextNode(String(c)));
    }
    return el;
  }
  function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); return el; }
  function replace(el, ...children) { return append(clear(el), children); }

  let idSeq = 0;
  const uid = (p) => `${p}-${++idSeq}`;

  // A labelled field: {label, input (element), hint}.
  function field(label, input, hint) {
    if (!input.id) input.id = uid('f');
    const hintEl = hint ? h('p', { class: 'hint', id: `${input.id}-hint` }, hint) : null;
    if (hintEl) input.setAttribute('aria-describedby', hintEl.id);
    return h('div', { class: 'field' }, h('label', { for: input.id }, label), input, hintEl);
  }

  function announce(text) {
    const el = document.getElementById('announce');
    el.textContent = '';
    // A new text node after a tick so that screen readers announce a repeated message.
    setTimeout(() => { el.textContent = text; }, 30);
  }

  // The error of an API call in plain words: its message, its fix, and its code.
  function errorBox(err, extra) {
    const box = h('div', { class: 'error', role: 'alert', 'data-testid': 'error' });
    if (!(err instanceof ApiError)) {
      append(box, [h('p', null, String((err && err.message) || err))]);
      return box;
    }
    append(box, [
      h('p', { class: 'error-message' }, err.message),
      err.fix ? h('p', { class: 'error-fix' }, h('strong', null, 'What to do: '), err.fix) : null,
      err.retryAfter ? h('p', null, `Try again in ${err.retryAfter} seconds.`) : null,
      h('p', { class: 'error-code' }, 'Code: ', h('code', { 'data-testid': 'error-code' }, err.code)),
      extra || null,
    ]);
    return box;
  }
  function okBox(...children) {
    return h('div', { class: 'ok', role: 'status', 'data-testid': 'ok' }, ...children);
  }

  const fmtTime = (s) => {
    if (!s) return '—';
    const d = new Date(s);
    if (Number.isNaN(d.getTime())) return String(s);
    const p = (n) => String(n).padStart(2, '0');
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  };
  const fmtNum = (n) => (typeof n === 'number' ? n.toLocaleString('en-US') : (n ?? '—'));
  const fmtRate = (n) => (typeof n === 'number' ? `${n.toFixed(1)}/s` : '—');
  const fmtDuration = (secs) => {
    if (typeof secs !== 'number') return '—';
    const d = Math.floor(secs / 86400);
    const hh = Math.floor((secs % 86400) / 3600);
    const m = Math.floor((secs % 3600) / 60);
    const s = Math.floor(secs % 60);
    if (d) return `${d} d ${hh} h`;
    if (hh) return `${hh} h ${m} min`;
    if (m) return `${m} min ${s} s`;
    return `${s} s`;
  };
  const fmtBytes = (n) => {
    if (typeof n !== 'number') return '—';
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
    if (n < 1024 * 1024 * 1024) return `${(n / 1024 / 1024).toFixed(1)} MiB`;
    return `${(n / 1024 / 1024 / 1024).toFixed(1)} GiB`;
  };
  // A fingerprint as AA:BB:..., whatever separators the server used.
  const fmtFingerprint = (hex) => {
    const clean = String(hex || '').replace(/[^0-9a-fA-F]/g, '').toUpperCase();
    return clean.match(/.{1,2}/g)?.join(':') || '—';
  };
  const plural = (n, one, many) => `${n} ${n === 1 ? one : (many || `${one}s`)}`;

  // A table that becomes a list of labelled cards on narrow screens (CSS uses data-label).
  // columns: [{label, cell: row => node|string, class}]
  function table(columns, rows, opts = {}) {
    const t = h('table', { class: `data ${opts.class || ''}`, 'data-testid': opts.testid || null });
    if (opts.caption) t.appendChild(h('caption', { class: opts.captionHidden ? 'visually-hidden' : null }, opts.caption));
    t.appendChild(h('thead', null, h('tr', null, columns.map((c) => h('th', { scope: 'col' }, c.label)))));
    const body = h('tbody');
    if (!rows.length) {
      body.appendChild(h('tr', { class: 'empty' }, h('td', { colspan: columns.length }, opts.empty || 'Nothing to show.')));
    }
    for (const r of rows) {
      const tr = h('tr', opts.rowAttrs ? opts.rowAttrs(r) : null);
      for (const c of columns) {
        tr.appendChild(h('td', { 'data-label': c.label, class: c.class || null }, c.cell(r)));
      }
      body.appendChild(tr);
    }
    t.appendChild(body);
    return h('div', { class: 'table-wrap' }, t);
  }

  function dl(pairs, attrs) {
    const el = h('dl', Object.assign({ class: 'facts' }, attrs || {}));
    for (const [k, v, testid] of pairs) {
      if (v === undefined) continue;
      el.appendChild(h('div', { class: 'fact', 'data-testid': testid || null }, h('dt', null, k), h('dd', null, v)));
    }
    return el;
  }

  function debounce(fn, ms) {
    let t = null;
    const d = (...a) => { clearTimeout(t); t = setTimeout(() => fn(...a), ms); };
    d.cancel = () => clearTimeout(t);
    return d;
  }

  // ---------------------------------------------------------------- dialogs

  // A modal dialog (native <dialog>: focus stays inside, Escape cancels). Resolves with the
  // value of the button pressed (confirmDialog: true/false).
  function modal({ title, body, buttons, testid }) {
    return new Promise((resolve) => {
      const before = document.activeElement;
      const titleId = uid('dlg-title');
      const bodyId = uid('dlg-body');
      const dlg = h('dialog', {
        role: 'dialog', 'aria-modal': 'true', 'aria-labelledby': titleId, 'aria-describedby': bodyId,
        class: 'modal', 'data-testid': testid || 'dialog',
      });
      const form = h('form', { method: 'dialog' });
      let result = null;
      const btns = buttons.map((b) => h('button', {
        type: b.submit ? 'submit' : 'button',
        class: b.class || null,
        'data-testid': b.testid || null,
        onclick: b.submit ? null : () => { result = b.value; dlg.close(); },
      }, b.label));
      form.addEventListener('submit', (ev) => {
        ev.preventDefault();
        const b = buttons.find((x) => x.submit);
        if (b && b.validate && !b.validate()) return;
        result = b ? (b.collect ? b.collect() : b.value) : null;
        dlg.close();
      });
      append(form, [
        h('h2', { id: titleId }, title),
        h('div', { id: bodyId, class: 'modal-body', 'data-testid': 'dialog-message' }, body),
        h('div', { class: 'actions' }, btns),
      ]);
      dlg.appendChild(form);
      dlg.addEventListener('close', () => {
        dlg.remove();
        if (before && typeof before.focus === 'function' && document.contains(before)) before.focus();
        resolve(result);
      });
      document.body.appendChild(dlg);
      dlg.showModal();
      const first = dlg.querySelector('input, textarea') || dlg.querySelector('[data-autofocus]') || btns[btns.length - 1];
      first.focus();
    });
  }
  function confirmDialog(title, body, confirmLabel, danger) {
    return modal({
      title, body,
      buttons: [
        { label: 'Cancel', value: false, class: 'secondary', testid: 'dialog-cancel' },
        { label: confirmLabel, value: true, submit: true, class: danger ? 'danger' : null, testid: 'dialog-confirm' },
      ],
    }).then((v) => v === true);
  }

  // ---------------------------------------------------------------- routing

  const pages = {};
  let current = { name: null, cleanup: null };

  function go(name) {
    if (location.hash !== `#/${name}`) location.hash = `#/${name}`;
    else route();
  }

  function route() {
    const hash = location.hash || '';
    if (hash && !hash.startsWith('#/')) return; // in-page anchors (the skip link)
    let name = hash.replace(/^#\//, '').split(/[/?]/)[0] || 'overview';
    if (!session.role) name = 'login';
    else if (name === 'login') name = 'overview';
    if (!pages[name]) name = 'notfound';
    if (current.cleanup) { try { current.cleanup(); } catch (_) { /* ignore */ } }
    current = { name, cleanup: null };
    renderChrome(name);
    const main = clear(document.getElementById('main'));
    const ctx = { onCleanup(fn) { const prev = current.cleanup; current.cleanup = () => { if (prev) prev(); fn(); }; } };
    const mine = current;
    Promise.resolve(pages[name](main, ctx)).catch((err) => {
      if (current !== mine) return;
      main.appendChild(errorBox(err));
    });
  }

  function renderChrome(name) {
    const loggedIn = !!session.role;
    document.getElementById('nav').hidden = !loggedIn;
    document.getElementById('who').hidden = !loggedIn;
    for (const a of document.querySelectorAll('#nav a[data-route]')) {
      if (a.dataset.route === name) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    for (const li of document.querySelectorAll('[data-admin-only]')) li.hidden = !session.isAdmin;
    const role = document.getElementById('role');
    role.textContent = loggedIn
      ? (session.isAdmin ? 'Signed in as admin' : 'Signed in as viewer (read only)')
      : '';
    role.dataset.role = session.role || '';
    document.title = `${titles[name] || 'Moat'} · Moat console`;
  }
  const titles = {
    login: 'Log in', overview: 'Overview', certificates: 'Certificates', expiry: 'Expiry',
    clients: 'Clients', forwarding: 'Forwarding', users: 'Users', acl: 'ACL', retained: 'Retained messages', audit: 'Audit log',
    notfound: 'Not found',
  };

  // A page heading that receives focus after navigation (for keyboard and screen reader users).
  function heading(main, text, intro) {
    const h1 = h('h1', { tabindex: '-1' }, text);
    main.appendChild(h1);
    if (intro) main.appendChild(h('p', { class: 'intro' }, intro));
    if (document.activeElement === document.body || document.activeElement?.closest?.('#nav')) {
      h1.focus({ preventScroll: true });
    }
    return h1;
  }
  const readOnlyNote = () => (session.isAdmin ? null
    : h('p', { class: 'note', 'data-testid': 'read-only' }, 'You are signed in as a viewer: you can look but not change anything.'));

  // ---------------------------------------------------------------- login

  pages.login = (main) => {
    heading(main, 'Log in to Moat', null);
    const token = h('input', {
      type: 'password', name: 'token', autocomplete: 'off', required: true, spellcheck: 'false',
      'data-testid': 'login-token',
    });
    const result = h('div', { 'aria-live': 'polite' });
    const submit = h('button', { type: 'submit', 'data-testid': 'login-submit' }, 'Log in');
    const form = h('form', { class: 'card narrow', novalidate: true },
      field('Access token', token,
        'The broker wrote two tokens when it first started, in its data directory: admin.token (read and change) and viewer.token (read only).'),
      h('div', { class: 'actions' }, submit),
      result);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      clear(result);
      const value = token.value.trim();
      if (!value) {
        result.appendChild(h('div', { class: 'error', role: 'alert', 'data-testid': 'error' }, 'Enter the token.'));
        token.focus();
        return;
      }
      submit.disabled = true;
      try {
        const s = await api('POST', `${API}/login`, { token: value });
        session.set(s.role, s.csrf);
        token.value = '';
        announce(`Logged in as ${s.role}.`);
        const want = (sessionStorage.getItem('moat.after-login') || '').replace(/^#\//, '');
        try { sessionStorage.removeItem('moat.after-login'); } catch (_) { /* ignore */ }
        go(want && pages[want] && want !== 'login' ? want : 'overview');
      } catch (err) {
        result.appendChild(errorBox(err));
        token.focus();
      } finally {
        submit.disabled = false;
      }
    });
    main.appendChild(form);
    token.focus();
  };

  // ---------------------------------------------------------------- overview

  // The reasons the broker names (moat-tls HandshakeFailure::label).
  const reasonWords = {
    unknown_ca: 'the peer\'s certificate was issued by a CA this listener does not trust',
    expired: 'the peer\'s certificate has expired',
    not_yet_valid: 'the peer\'s certificate is not valid yet',
    revoked: 'a CRL lists the peer\'s certificate',
    not_allowed: 'the certificate may not be used here (missing clientAuth extended key usage?)',
    no_client_certificate: 'the listener requires a client certificate and none was sent',
    v1_certificate: 'an X.509 v1 client certificate (allow with accept_v1_client_certs)',
    protocol_version: 'the peer offered no TLS version or cipher the broker accepts',
    client_rejected_server_certificate: 'the client refused the broker\'s certificate (its CA, name or expiry)',
    handshake_timeout: 'the peer did not finish the TLS handshake in time',
    no_server_certificate: 'the listener\'s certificate was deleted: install or restore one',
    crl_stale: 'a CRL is past its next update and the listener is fail_closed: sign a fresh one (moat cert crl)',
    other: 'not a TLS client, or the connection broke',
  };

  pages.overview = async (main, ctx) => {
    heading(main, 'Overview');
    const updated = h('p', { class: 'updated', 'data-testid': 'overview-updated', 'aria-live': 'off' }, 'Loading…');
    const body = h('div', { class: 'overview' });
    const errArea = h('div', { 'aria-live': 'polite' });
    append(main, [updated, errArea, body]);
    let timer = null;
    let stopped = false;
    ctx.onCleanup(() => { stopped = true; clearTimeout(timer); });
    async function tick() {
      try {
        // Forwarding is a tile when rules exist; its failure never hides the overview.
        const [o, fw] = await Promise.all([api('GET', url('overview')), api('GET', url('forward')).catch(() => null)]);
        if (stopped) return;
        clear(errArea);
        renderOverview(body, o, Array.isArray(fw) ? fw : []);
        updated.textContent = `Updated ${fmtTime(new Date().toISOString())}; refreshes every 5 seconds.`;
      } catch (err) {
        if (stopped) return;
        replace(errArea, errorBox(err));
      }
      if (!stopped) timer = setTimeout(tick, REFRESH_MS);
    }
    await tick();
  };

  function renderOverview(body, o, forward) {
    const c = o.connections || {};
    const m = o.messages || {};
    const byListener = Object.entries(c.by_listener || {});
    const hf = o.handshake_failures || {};
    const reasons = Object.entries(hf.by_reason || {}).sort((a, b) => b[1] - a[1]);
    const recent = Array.isArray(hf.recent) ? hf.recent : [];
    const expiry = Array.isArray(o.expiry) ? o.expiry : [];
    replace(body,
      h('div', { class: 'tiles' },
        tile('Connections', fmtNum(c.total), 'overview-connections'),
        tile('Received', fmtRate(m.received_per_sec), 'overview-received-rate', `${fmtNum(m.received)} in total`),
        tile('Sent', fmtRate(m.sent_per_sec), 'overview-sent-rate', `${fmtNum(m.sent)} in total`),
        tile('Sessions', fmtNum(o.sessions), 'overview-sessions'),
        tile('Subscriptions', fmtNum(o.subscriptions), 'overview-subscriptions'),
        tile('Retained messages', fmtNum(o.retained), 'overview-retained'),
        tile('Handshake failures', fmtNum(reasons.reduce((s, [, n]) => s + (Number(n) || 0), 0)), 'overview-failures-total'),
        forward.length ? forwardTile(forward) : null),
      h('p', { class: 'muted' }, `Moat ${o.version || ''}, up ${fmtDuration(o.uptime_secs)}.`),
      h('section', { class: 'card', 'aria-labelledby': 'ov-conn' },
        h('h2', { id: 'ov-conn' }, 'Connections by listener'),
        table([
          { label: 'Listener', cell: ([name]) => name },
          { label: 'Connections', cell: ([, n]) => fmtNum(n), class: 'num' },
        ], byListener, { testid: 'overview-by-listener', empty: 'No client is connected.' })),
      h('section', { class: 'card', 'aria-labelledby': 'ov-hf', 'data-testid': 'overview-failures' },
        h('h2', { id: 'ov-hf' }, 'TLS handshake failures'),
        table([
          { label: 'Cause', cell: ([r]) => h('code', null, r) },
          { label: 'Count', cell: ([, n]) => fmtNum(n), class: 'num' },
          { label: 'Meaning', cell: ([r]) => reasonWords[r] || '—' },
        ], reasons, { empty: 'No failed handshake since the broker started.', caption: 'By cause', captionHidden: false }),
        recent.length ? table([
          { label: 'When', cell: (f) => fmtTime(f.at) },
          { label: 'Listener', cell: (f) => f.listener || '—' },
          { label: 'Peer', cell: (f) => f.peer || '—' },
          { label: 'Cause', cell: (f) => h('code', null, f.reason || '—') },
          { label: 'Detail', cell: (f) => f.detail || reasonWords[f.reason] || '—' },
        ], recent, { caption: 'Most recent', testid: 'overview-recent-failures' }) : null),
      h('section', { class: 'card', 'aria-labelledby': 'ov-exp', 'data-testid': 'overview-expiry' },
        h('h2', { id: 'ov-exp' }, 'Soonest certificate expiries'),
        expiryTable(expiry),
        h('p', null, h('a', { href: '#/expiry' }, 'All expiry dates'))));
  }
  function tile(label, value, testid, sub, cls) {
    return h('div', { class: `tile${cls ? ` ${cls}` : ''}`, 'data-testid': testid },
      h('div', { class: 'tile-label' }, label),
      h('div', { class: 'tile-value' }, value),
      sub ? h('div', { class: 'tile-sub' }, sub) : null);
  }
  // "Forwarding: 2 rules" and, under it, what is wrong ("1 sink down") or "all sinks up".
  function forwardTile(rules) {
    const s = forwardSummary(rules);
    const rest = s.text.split(', ').slice(1).join(', ');
    return tile('Forwarding', plural(rules.length, 'rule'), 'overview-forwarding',
      h('a', { href: '#/forwarding' }, rest || 'details'), s.bad ? 'tile-bad' : null);
  }

  // ---------------------------------------------------------------- expiry

  const levelInfo = {
    expired: { text: 'Expired', cls: 'lvl-expired' },
    '1d': { text: 'Within 1 day', cls: 'lvl-1d' },
    '7d': { text: 'Within 7 days', cls: 'lvl-7d' },
    '30d': { text: 'Within 30 days', cls: 'lvl-30d' },
    ok: { text: 'OK', cls: 'lvl-ok' },
  };
  function levelOfDays(days) {
    if (typeof days !== 'number') return 'ok';
    if (days < 0) return 'expired';
    if (days < 1) return '1d';
    if (days < 7) return '7d';
    if (days < 30) return '30d';
    return 'ok';
  }
  function levelBadge(level) {
    const l = levelInfo[level] || { text: String(level), cls: '' };
    return h('span', { class: `badge ${l.cls}`, 'data-level': level }, l.text);
  }
  function daysText(days) {
    if (typeof days !== 'number') return '—';
    if (days < 0) return `expired ${plural(-days, 'day')} ago`;
    return plural(days, 'day');
  }
  const kindWords = {
    server: 'Server certificate', chain: 'Intermediate (chain)', client_ca: 'Client CA',
    crl_next_update: 'CRL next update', ocsp_next_update: 'OCSP response next update',
    client: 'Client certificate',
  };
  function expiryTable(items, testid) {
    return table([
      { label: 'Level', cell: (e) => levelBadge(e.level) },
      { label: 'What', cell: (e) => kindWords[e.kind] || e.kind },
      { label: 'Where', cell: (e) => (e.client_id ? `client ${e.client_id}` : (e.certificate_set ? `set ${e.certificate_set}` : '—')) },
      { label: 'Subject', cell: (e) => e.subject || '—', class: 'wrap' },
      { label: 'Expires', cell: (e) => fmtTime(e.not_after) },
      { label: 'Days left', cell: (e) => daysText(e.days_left) },
    ], items, {
      testid: testid || 'expiry-table',
      empty: 'No certificate to watch.',
      rowAttrs: (e) => ({ class: `row-${(levelInfo[e.level] || {}).cls || ''}`, 'data-level': e.level }),
    });
  }

  pages.expiry = async (main) => {
    heading(main, 'Certificate expiry',
      'Every certificate the broker serves or trusts, and the clients\' certificates, soonest first. Levels: expired, within 1 day, within 7 days, within 30 days.');
    const items = await api('GET', url('expiry'));
    const counts = {};
    for (const e of items) counts[e.level] = (counts[e.level] || 0) + 1;
    main.appendChild(h('ul', { class: 'legend', 'aria-label': 'Counts by level' },
      ['expired', '1d', '7d', '30d', 'ok'].map((l) => h('li', null, levelBadge(l), ` ${counts[l] || 0}`))));
    main.appendChild(h('section', { class: 'card' }, expiryTable(items)));
  };

  // ---------------------------------------------------------------- certificates

  const authWords = {
    none: 'One-way TLS: clients need no certificate (none)',
    optional: 'Optional client certificate: checked when a client sends one (optional)',
    required: 'Two-way TLS: every client must present a certificate (required)',
  };
  const partNames = { cert: 'Server certificate', chain: 'Intermediate certificates (chain)', key: 'Private key', client_ca: 'Client CA' };
  // Remembered per set across re-renders of the page: the last result shown.
  const certResults = new Map();

  function certDetail(c, testidPrefix) {
    if (!c) return h('p', { class: 'muted' }, 'No certificate installed.');
    const level = levelOfDays(c.days_left);
    return dl([
      ['Subject', c.subject || '—', `${testidPrefix}-subject`],
      ['Names (SAN)', (c.sans && c.sans.length) ? h('ul', { class: 'inline-list' }, c.sans.map((s) => h('li', null, s))) : 'none', `${testidPrefix}-sans`],
      ['Issuer', c.issuer || '—', `${testidPrefix}-issuer`],
      ['Valid', `${fmtTime(c.not_before)} to ${fmtTime(c.not_after)}`, `${testidPrefix}-validity`],
      ['Days left', h('span', null, levelBadge(level), ' ', daysText(c.days_left)), `${testidPrefix}-days-left`],
      ['Key', c.key_type || '—', `${testidPrefix}-key-type`],
      ['SHA-256 fingerprint', h('code', { class: 'fp', 'data-fingerprint': fmtFingerprint(c.fingerprint_sha256) }, fmtFingerprint(c.fingerprint_sha256)), `${testidPrefix}-fingerprint`],
      ['Serial', c.serial ? h('code', { class: 'fp' }, c.serial) : '—'],
      c.is_ca ? ['CA certificate', 'yes'] : [null, undefined],
    ].filter((p) => p[0]));
  }
  function certList(list, title, testid) {
    const items = Array.isArray(list) ? list : [];
    return h('details', { class: 'sub', 'data-testid': testid },
      h('summary', null, `${title} (${items.length})`),
      items.length ? h('ol', { class: 'certs' }, items.map((c) => h('li', null, certDetail(c, `${testid}-cert`))))
        : h('p', { class: 'muted' }, 'None.'));
  }
  function findingsTable(findings, testid) {
    const sev = { error: 'Error', warning: 'Warning', info: 'Info' };
    return table([
      { label: 'Severity', cell: (f) => h('span', { class: `badge sev-${f.severity}` }, sev[f.severity] || f.severity || '—') },
      { label: 'Code', cell: (f) => h('code', { 'data-testid': 'finding-code' }, f.code || '—') },
      { label: 'File', cell: (f) => (f.file ? (partNames[f.file] || f.file) : '—') },
      { label: 'What is wrong', cell: (f) => f.message || '—', class: 'wrap' },
      { label: 'How to fix it', cell: (f) => f.fix || '—', class: 'wrap' },
    ], findings || [], {
      testid: testid || 'findings',
      empty: 'No findings.',
      rowAttrs: (f) => ({ 'data-testid': 'finding', 'data-code': f.code || '', 'data-severity': f.severity || '' }),
    });
  }

  pages.certificates = async (main, ctx) => {
    heading(main, 'Certificates',
      'A certificate set is the TLS material (certificate, chain, key, client CA, CRLs) that one or more TLS listeners serve. A new set is checked and staged first, then activated.');
    const ro = readOnlyNote();
    if (ro) main.appendChild(ro);
    const list = h('div', { class: 'sets' });
    main.appendChild(list);
    let listeners = [];
    const load = async () => {
      const [sets, ls] = await Promise.all([api('GET', url('certificates')), api('GET', url('listeners')).catch(() => listeners)]);
      listeners = Array.isArray(ls) ? ls : [];
      if (current.name !== 'certificates') return;
      // Keep open <details> and typed form values across re-renders where the card stays.
      clear(list);
      if (!sets.length) list.appendChild(h('p', null, 'No TLS listener is configured: there is no certificate set.'));
      for (const set of sets) list.appendChild(certSetCard(set, listeners, load));
    };
    ctx.onCleanup(() => certResults.clear());
    await load();
  };

  function certSetCard(set, listeners, reload) {
    const id = set.id;
    const headingId = uid('set');
    const card = h('section', { class: `card certset state-${set.state}`, 'aria-labelledby': headingId, 'data-testid': `certset-${id}`, 'data-set': id });
    const result = h('div', { class: 'result', 'aria-live': 'polite', 'data-testid': 'set-result' });
    const prev = certResults.get(id);
    if (prev) append(result, [prev]);
    const show = (node) => { certResults.set(id, node); replace(result, node); };

    const lst = (set.listeners || []).map((name) => {
      const l = listeners.find((x) => x.name === name);
      return h('li', null, h('strong', null, name), l ? ` ${l.kind} on ${l.address}, ${plural(l.connections ?? 0, 'connection')}` : '');
    });
    append(card, [
      h('div', { class: 'card-head' },
        h('h2', { id: headingId }, `Certificate set ${id}`),
        h('span', { class: `badge state ${set.state === 'active' ? 'lvl-ok' : 'lvl-expired'}`, 'data-testid': 'set-state' },
          set.state === 'active' ? 'Active' : 'Removed: handshakes refused')),
      dl([
        ['Listeners', h('ul', { class: 'inline-list' }, lst), 'set-listeners'],
        ['Client authentication', authWords[set.client_auth] || set.client_auth || '—', 'set-client-auth'],
        ['Connected clients', fmtNum(set.connected_clients), 'set-connected'],
      ]),
      h('h3', null, 'Server certificate'),
      h('div', { 'data-testid': 'active-cert' }, certDetail(set.certificate, 'cert')),
      certList(set.chain, 'Chain', 'chain'),
      certList(set.client_ca, 'Client CA', 'client-ca'),
      h('details', { class: 'sub', 'data-testid': 'crls' },
        h('summary', null, `Revocation lists (${(set.crls || []).length})`),
        table([
          { label: 'Issuer', cell: (c) => c.issuer || '—', class: 'wrap' },
          { label: 'Next update', cell: (c) => fmtTime(c.next_update) },
          { label: 'Revoked', cell: (c) => fmtNum(c.revoked), class: 'num' },
        ], set.crls || [], { empty: 'No CRL loaded.' })),
      (set.warnings && set.warnings.length) ? h('div', null, h('h3', null, 'Warnings'), findingsTable(set.warnings, 'set-warnings')) : null,
    ]);

    if (set.pending) card.appendChild(pendingBlock(set, show, reload));

    if (session.isAdmin) {
      const actions = h('div', { class: 'actions' });
      if (set.previous) {
        actions.appendChild(h('button', {
          type: 'button', class: 'secondary', 'data-testid': 'restore',
          onclick: (ev) => runActivation(ev.currentTarget, `certificates/${enc(id)}/restore`, 'Previous set restored', show, reload),
        }, 'Restore previous'));
      }
      if (set.state === 'active') {
        actions.appendChild(h('button', {
          type: 'button', class: 'danger', 'data-testid': 'delete',
          onclick: (ev) => deleteSet(ev.currentTarget, id, show, reload),
        }, 'Delete…'));
      }
      if (actions.childNodes.length) card.appendChild(actions);
      card.appendChild(uploadForm(set, show, reload));
    }
    card.appendChild(result);
    return card;
  }

  function pendingBlock(set, show, reload) {
    const p = set.pending;
    const box = h('div', { class: 'pending', 'data-testid': 'pending' },
      h('h3', null, 'Staged, not active yet'),
      h('p', { class: 'muted' }, `Uploaded ${fmtTime(p.uploaded_at)}. Client authentication: ${authWords[p.client_auth] || p.client_auth || 'unchanged'}.`),
      (p.notes && p.notes.length) ? h('ul', { class: 'notes', 'data-testid': 'pending-notes' }, p.notes.map((n) => h('li', { 'data-testid': 'note' }, n))) : null,
      h('div', { 'data-testid': 'pending-cert' }, certDetail(p.certificate, 'pending-cert')),
      certList(p.chain, 'Chain', 'pending-chain'),
      certList(p.client_ca, 'Client CA', 'pending-client-ca'),
      (p.warnings && p.warnings.length) ? findingsTable(p.warnings, 'pending-warnings') : null);
    if (session.isAdmin) {
      box.appendChild(h('div', { class: 'actions' },
        h('button', {
          type: 'button', 'data-testid': 'activate',
          onclick: (ev) => runActivation(ev.currentTarget, `certificates/${enc(set.id)}/activate`, 'Activated', show, reload),
        }, 'Activate'),
        h('button', {
          type: 'button', class: 'secondary', 'data-testid': 'discard',
          onclick: async (ev) => {
            const b = ev.currentTarget;
            b.disabled = true;
            try {
              await api('DELETE', url(`certificates/${enc(set.id)}/pending`));
              show(okBox(h('p', null, 'The staged set was discarded; nothing changed on the listeners.')));
              announce('Staged set discarded.');
              await reload();
            } catch (err) { show(errorBox(err)); b.disabled = false; }
          },
        }, 'Discard')));
    }
    return box;
  }

  async function runActivation(button, path, what, show, reload) {
    button.disabled = true;
    try {
      const r = await api('POST', url(path));
      const hs = (r.test_handshake || []).map((t) => `${t.listener}: ${t.ok ? 'ok' : 'failed'}`).join(', ');
      show(okBox(
        h('p', { 'data-testid': 'activation-result' }, `${what} on ${(r.listeners || []).join(', ') || 'no listener'}.`),
        hs ? h('p', null, `Test handshake: ${hs}.`) : null,
        (r.warnings && r.warnings.length) ? findingsTable(r.warnings, 'activation-warnings') : null));
      announce(`${what}.`);
      await reload();
    } catch (err) {
      show(errorBox(err, err.findings.length ? findingsTable(err.findings) : null));
      button.disabled = false;
    }
  }

  async function deleteSet(button, id, show, reload) {
    button.disabled = true;
    let preview;
    try {
      preview = await api('GET', url(`certificates/${enc(id)}/delete-preview`));
    } catch (err) {
      show(errorBox(err));
      button.disabled = false;
      return;
    }
    const ls = preview.listeners || [];
    const total = preview.total ?? ls.reduce((s, l) => s + (l.clients || 0), 0);
    const names = ls.map((l) => `${l.name} (${l.clients})`).join(', ');
    const sentence = `${plural(total, 'client')} on ${ls.length === 1 ? 'listener' : 'listeners'} ${names} will be disconnected.`;
    const ok = await confirmDialog(`Delete certificate set ${id}?`, [
      h('p', { 'data-testid': 'delete-impact' }, sentence),
      h('p', null, 'The listeners will refuse TLS handshakes until new material is staged and activated, or the previous set is restored, also after a restart.'),
    ], 'Delete and disconnect', true);
    if (!ok) { button.disabled = false; return; }
    try {
      const r = await api('DELETE', url(`certificates/${enc(id)}`));
      const done = (r.listeners || []).map((l) => `${l.name} (${l.clients})`).join(', ');
      show(okBox(h('p', { 'data-testid': 'delete-result' }, `Deleted. ${plural(r.total ?? 0, 'client')} disconnected${done ? ` on ${done}` : ''}.`)));
      announce(`Certificate set ${id} deleted.`);
      await reload();
    } catch (err) {
      show(errorBox(err));
      button.disabled = false;
    }
  }

  function uploadForm(set, show, reload) {
    const id = set.id;
    const parts = ['cert', 'chain', 'key', 'client_ca'];
    const inputs = {};
    const form = h('form', { class: 'upload', novalidate: true, 'data-testid': `upload-${id}` });
    const groups = parts.map((p) => {
      const file = h('input', { type: 'file', name: p, 'data-testid': `file-${p}`, accept: '.pem,.crt,.cer,.der,.key,.p8,.txt,application/x-pem-file,application/x-x509-ca-cert' });
      const text = h('textarea', { name: `${p}_text`, rows: '4', spellcheck: 'false', autocomplete: 'off', 'data-testid': `paste-${p}`, placeholder: '-----BEGIN …-----' });
      inputs[p] = { file, text };
      return h('fieldset', { class: 'part' },
        h('legend', null, partNames[p]),
        field('File (PEM or DER)', file),
        field(`…or paste the PEM text`, text));
    });
    const pass = h('input', { type: 'password', name: 'key_passphrase', autocomplete: 'off', 'data-testid': 'key-passphrase' });
    const radios = ['none', 'optional', 'required'].map((mode) => {
      const r = h('input', { type: 'radio', name: `client_auth_${id}`, value: mode, id: uid('ca'), checked: set.client_auth === mode, 'data-testid': `client-auth-${mode}` });
      return h('div', { class: 'radio' }, r, h('label', { for: r.id }, authWords[mode]));
    });
    const submit = h('button', { type: 'submit', 'data-testid': 'stage' }, 'Check and stage');
    append(form, [
      h('p', { class: 'hint' }, 'Give only what changes: a part left empty is kept from the active set. A file wins over pasted text. Nothing goes live until you press Activate.'),
      h('div', { class: 'parts' }, groups),
      field('Key passphrase (only for an encrypted key)', pass),
      h('fieldset', { class: 'radios' }, h('legend', null, 'Client authentication'), radios),
      h('div', { class: 'actions' }, submit),
    ]);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const anyFile = parts.some((p) => inputs[p].file.files.length);
      const anyText = parts.some((p) => inputs[p].text.value.trim());
      if (!anyFile && !anyText) {
        show(h('div', { class: 'error', role: 'alert', 'data-testid': 'error' }, 'Choose a file or paste PEM text for at least one part.'));
        return;
      }
      const modeEl = form.querySelector(`input[name="client_auth_${CSS.escape(id)}"]:checked`);
      const mode = modeEl ? modeEl.value : null;
      let body;
      if (anyFile) {
        // multipart/form-data: files go as they are (PEM or DER bytes), pasted text as text parts.
        body = new FormData();
        for (const p of parts) {
          const f = inputs[p].file.files[0];
          if (f) body.append(p, f, f.name);
          else if (inputs[p].text.value.trim()) body.append(p, inputs[p].text.value);
        }
        if (pass.value) body.append('key_passphrase', pass.value);
        if (mode) body.append('client_auth', mode);
      } else {
        body = {};
        for (const p of parts) {
          const t = inputs[p].text.value.trim();
          if (t) body[p] = `${t}\n`;
        }
        body.key_passphrase = pass.value || null;
        body.client_auth = mode;
      }
      submit.disabled = true;
      show(h('p', { class: 'muted' }, 'Checking…'));
      try {
        const pending = await api('PUT', url(`certificates/${enc(id)}/pending`), body);
        const notes = pending.notes || [];
        show(okBox(
          h('p', { 'data-testid': 'stage-result' }, 'Checked and staged. Review it above, then Activate or Discard.'),
          notes.length ? h('ul', { class: 'notes', 'data-testid': 'stage-notes' }, notes.map((n) => h('li', { 'data-testid': 'note' }, n))) : null,
          (pending.warnings && pending.warnings.length) ? findingsTable(pending.warnings, 'stage-findings') : null));
        announce('Certificate set checked and staged.');
        form.reset();
        await reload();
      } catch (err) {
        const refused = err.code === 'certificate_refused';
        show(errorBox(err, h('div', null,
          refused ? h('p', { 'data-testid': 'stage-refused' }, 'Nothing was staged; the active set is unchanged.') : null,
          err.findings.length ? findingsTable(err.findings, 'stage-findings') : null)));
        announce(refused ? `Refused: ${plural(err.findings.length, 'finding')}.` : 'The upload failed.');
      } finally {
        submit.disabled = false;
      }
    });
    return h('details', { class: 'sub upload-wrap', 'data-testid': 'upload' },
      h('summary', null, 'Upload new certificate, chain, key or client CA'),
      form);
  }

  // ---------------------------------------------------------------- clients

  pages.clients = async (main, ctx) => {
    heading(main, 'Clients', 'Connected clients, sorted by client id, one page at a time. Filters apply as you type.');
    const f = {
      prefix: h('input', { type: 'search', name: 'prefix', autocomplete: 'off', 'data-testid': 'filter-prefix' }),
      username: h('input', { type: 'search', name: 'username', autocomplete: 'off', 'data-testid': 'filter-username' }),
      listener: h('select', { name: 'listener', 'data-testid': 'filter-listener' }, h('option', { value: '' }, 'Any listener')),
      cert_identity: h('input', { type: 'search', name: 'cert_identity', autocomplete: 'off', 'data-testid': 'filter-cert-identity' }),
      address: h('input', { type: 'search', name: 'address', autocomplete: 'off', 'data-testid': 'filter-address' }),
      limit: h('select', { name: 'limit', 'data-testid': 'filter-limit' }, [50, 100, 200, 500].map((n) => h('option', { value: String(n) }, String(n)))),
    };
    const filters = h('form', { class: 'filters card', role: 'search', 'aria-label': 'Filter clients' },
      field('Client id starts with', f.prefix),
      field('User name', f.username),
      field('Listener', f.listener),
      field('Certificate identity', f.cert_identity),
      field('Address', f.address),
      field('Per page', f.limit));
    const status = h('p', { class: 'muted', 'aria-live': 'polite', 'data-testid': 'clients-status' });
    const listArea = h('div', { 'data-testid': 'clients-list' });
    const firstBtn = h('button', { type: 'button', class: 'secondary', 'data-testid': 'first-page', disabled: true }, 'First page');
    const nextBtn = h('button', { type: 'button', class: 'secondary', 'data-testid': 'next-page', disabled: true }, 'Next page');
    const detail = h('section', { class: 'card detail', 'aria-live': 'polite', 'data-testid': 'client-detail', hidden: true, tabindex: '-1' });
    append(main, [filters, status, listArea, h('div', { class: 'actions pager' }, firstBtn, nextBtn), detail]);

    api('GET', url('listeners')).then((ls) => {
      for (const l of ls || []) f.listener.appendChild(h('option', { value: l.name }, `${l.name} (${l.kind})`));
    }).catch(() => { /* the filter still works by typing nothing */ });

    let page = 1;
    let after = null;
    let lastItems = [];
    let seq = 0;
    const params = () => ({
      prefix: f.prefix.value.trim(), username: f.username.value.trim(), listener: f.listener.value,
      cert_identity: f.cert_identity.value.trim(), address: f.address.value.trim(), limit: f.limit.value,
    });
    async function load(cursor, pageNo) {
      const mine = ++seq;
      status.textContent = 'Loading…';
      try {
        const r = await api('GET', url('clients', Object.assign(params(), { after: cursor })));
        if (mine !== seq || current.name !== 'clients') return;
        const items = r.items || [];
        lastItems = items;
        after = cursor;
        page = pageNo;
        replace(listArea, table([
          { label: 'Client id', cell: (c) => h('button', { type: 'button', class: 'link', 'data-testid': 'client-open', onclick: () => openClient(c.client_id) }, c.client_id) },
          { label: 'User', cell: (c) => c.username ?? '—' },
          { label: 'Listener', cell: (c) => c.listener || '—' },
          { label: 'Address', cell: (c) => c.address ?? '—' },
          { label: 'Protocol', cell: (c) => c.protocol || '—' },
          { label: 'Connected', cell: (c) => fmtTime(c.connected_at) },
          { label: 'Subs', cell: (c) => fmtNum(c.subscriptions), class: 'num' },
          { label: 'Queued', cell: (c) => fmtNum(c.queued), class: 'num' },
          { label: 'Certificate', cell: (c) => (c.tls ? (c.tls.identity || c.tls.subject || c.tls.version || 'TLS') : 'no TLS') },
        ], items, {
          testid: 'clients-table', empty: 'No connected client matches.',
          rowAttrs: (c) => ({ 'data-testid': 'client-row', 'data-client-id': c.client_id }),
        }));
        status.textContent = `Page ${page}: ${plural(items.length, 'client')}${r.more ? ', more on the next page' : ''}.`;
        nextBtn.disabled = !r.more;
        firstBtn.disabled = page === 1;
        nextBtn.onclick = () => load(r.next_after ?? (items.length ? items[items.length - 1].client_id : cursor), page + 1);
      } catch (err) {
        if (mine !== seq) return;
        status.textContent = '';
        replace(listArea, errorBox(err));
      }
    }
    firstBtn.onclick = () => load(null, 1);
    const refilter = debounce(() => load(null, 1), DEBOUNCE_MS);
    filters.addEventListener('input', refilter);
    filters.addEventListener('change', refilter);
    filters.addEventListener('submit', (ev) => { ev.preventDefault(); refilter.cancel(); load(null, 1); });
    ctx.onCleanup(() => { refilter.cancel(); seq++; });

    async function openClient(clientId) {
      detail.hidden = false;
      replace(detail, h('p', { class: 'muted' }, `Loading ${clientId}…`));
      try {
        const c = await api('GET', url(`clients/${enc(clientId)}`));
        renderClient(c);
      } catch (err) {
        replace(detail, h('h2', null, `Client ${clientId}`), errorBox(err));
      }
      detail.focus({ preventScroll: false });
    }
    function renderClient(c) {
      const conn = c.connected;
      const tls = conn && conn.tls;
      const subs = c.subscriptions || [];
      const disc = session.isAdmin && conn ? h('button', {
        type: 'button', class: 'danger', 'data-testid': 'disconnect',
        onclick: async (ev) => {
          const b = ev.currentTarget;
          const ok = await confirmDialog(`Disconnect ${c.client_id}?`,
            h('p', null, `The client ${c.client_id} will be disconnected now (MQTT 5 clients are told "administrative action"). It may connect again.`),
            'Disconnect', true);
          if (!ok) return;
          b.disabled = true;
          try {
            const r = await api('POST', url(`clients/${enc(c.client_id)}/disconnect`));
            detail.appendChild(okBox(h('p', { 'data-testid': 'disconnect-result' },
              r.disconnected ? `${c.client_id} was disconnected.` : `${c.client_id} was not connected.`)));
            announce(r.disconnected ? `${c.client_id} disconnected.` : `${c.client_id} was not connected.`);
            load(after, page);
          } catch (err) { detail.appendChild(errorBox(err)); b.disabled = false; }
        },
      }, 'Disconnect…') : null;
      replace(detail,
        h('div', { class: 'card-head' },
          h('h2', null, `Client ${c.client_id}`),
          h('button', { type: 'button', class: 'secondary', 'data-testid': 'detail-close', onclick: () => { detail.hidden = true; } }, 'Close')),
        dl([
          ['State', conn ? `connected on ${conn.listener} from ${conn.address ?? 'unknown address'}` : 'not connected (session kept)'],
          ['User', conn ? (conn.username ?? '—') : undefined],
          ['Protocol', conn ? `MQTT ${conn.protocol}` : undefined],
          ['Connected since', conn ? fmtTime(conn.connected_at) : undefined],
          ['Keep alive', conn ? `${conn.keep_alive} s` : undefined],
          ['Queued', `${fmtNum(c.queued)} messages (${fmtBytes(c.queued_bytes)})`, 'client-queued'],
          ['In flight', fmtNum(c.inflight)],
          ['Session expiry', c.expiry_secs == null ? '—' : `${fmtNum(c.expiry_secs)} s`],
        ]),
        h('h3', null, `Subscriptions (${subs.length})`),
        table([
          { label: 'Filter', cell: (s) => h('code', null, s.filter), class: 'wrap' },
          { label: 'QoS', cell: (s) => String(s.qos), class: 'num' },
          { label: 'No local', cell: (s) => (s.no_local ? 'yes' : 'no') },
          { label: 'Retain as published', cell: (s) => (s.retain_as_published ? 'yes' : 'no') },
          { label: 'Retain handling', cell: (s) => String(s.retain_handling ?? '—') },
        ], subs, { testid: 'client-subscriptions', empty: 'No subscription.' }),
        h('h3', null, 'Certificate'),
        tls ? dl([
          ['TLS version', tls.version || '—'],
          ['Identity', tls.identity ?? '—'],
          ['Subject', tls.subject ?? '—'],
          ['Fingerprint', tls.fingerprint ? h('code', { class: 'fp' }, fmtFingerprint(tls.fingerprint)) : '—'],
          ['Expires', tls.not_after ? fmtTime(tls.not_after) : '—'],
        ]) : h('p', { class: 'muted' }, conn ? 'No client certificate (or not a TLS connection).' : '—'),
        disc ? h('div', { class: 'actions' }, disc) : null);
    }
    await load(null, 1);
  };

  // ---------------------------------------------------------------- forwarding

  // A rule's sink state: words and a colour (the words carry the meaning, the colour helps).
  const sinkStates = {
    up: { text: 'Sink up', cls: 'lvl-ok', icon: '✓' },
    down: { text: 'Sink down', cls: 'lvl-1d', icon: '✕' },
    starting: { text: 'Starting', cls: 'state-starting', icon: '…' },
  };
  function sinkBadge(state) {
    const s = sinkStates[state] || { text: String(state || 'unknown'), cls: '', icon: '' };
    return h('span', { class: `badge ${s.cls}`, 'data-testid': 'forward-state', 'data-state': state || '' },
      s.icon ? h('span', { 'aria-hidden': 'true' }, `${s.icon} `) : null, s.text);
  }
  // "2 rules, 1 sink down, 1 spool full" (or "all sinks up"), for the page and the overview.
  function forwardSummary(rules) {
    const down = rules.filter((r) => r.state === 'down').length;
    const full = rules.filter((r) => r.full).length;
    const starting = rules.filter((r) => r.state === 'starting').length;
    const parts = [plural(rules.length, 'rule')];
    if (down) parts.push(`${plural(down, 'sink')} down`);
    if (full) parts.push(`${plural(full, 'spool')} full`);
    if (!down && !full) parts.push(starting === rules.length ? 'nothing written yet' : (starting ? `${starting} starting, the others up` : 'all sinks up'));
    return { text: parts.join(', '), bad: down + full };
  }

  pages.forwarding = async (main, ctx) => {
    heading(main, 'Forwarding',
      'Rules deliver accepted messages to PostgreSQL or NATS JetStream through an on-disk spool. Counters count since the broker started.');
    const updated = h('p', { class: 'updated', 'data-testid': 'forward-updated', 'aria-live': 'off' }, 'Loading…');
    const summary = h('p', { class: 'summary', 'data-testid': 'forward-summary' });
    const errArea = h('div', { 'aria-live': 'polite' });
    const body = h('div', { 'data-testid': 'forward-rules' });
    append(main, [updated, summary, errArea, body]);
    let timer = null;
    let stopped = false;
    let said = null;
    ctx.onCleanup(() => { stopped = true; clearTimeout(timer); });
    async function tick() {
      try {
        const rules = await api('GET', url('forward'));
        if (stopped) return;
        clear(errArea);
        renderForwarding(body, summary, Array.isArray(rules) ? rules : []);
        // Tell screen reader users when the health changes, not at every refresh.
        if (said !== null && said !== summary.textContent) announce(`Forwarding: ${summary.textContent}`);
        said = summary.textContent;
        updated.textContent = `Updated ${fmtTime(new Date().toISOString())}; refreshes every 5 seconds.`;
      } catch (err) {
        if (stopped) return;
        replace(errArea, errorBox(err));
      }
      if (!stopped) timer = setTimeout(tick, REFRESH_MS);
    }
    await tick();
  };

  function renderForwarding(body, summary, rules) {
    if (!rules.length) {
      summary.textContent = '';
      replace(body, h('section', { class: 'card', 'data-testid': 'forward-empty', 'aria-labelledby': 'fw-none' },
        h('h2', { id: 'fw-none' }, 'No forwarding rule is configured'),
        h('p', null, 'To deliver messages to PostgreSQL or NATS JetStream, add a ',
          h('code', null, '[[forward.sinks]]'), ' (the connection) and one or more ',
          h('code', null, '[[forward.rules]]'), ' (which topic filters go to which sink) to ',
          h('code', null, 'moat.toml'), ', then restart ', h('code', null, 'moat serve'), '. For example:'),
        h('pre', { class: 'code' }, [
          '[[forward.sinks]]', 'name = "queue"', 'kind = "jetstream"          # or "postgres"', 'url = "nats://127.0.0.1:4222"', '',
          '[[forward.rules]]', 'name = "events"', 'filters = ["devices/+/events/#"]', 'sink = "queue"', 'stream = "MOAT_EVENTS"',
        ].join('\n')),
        h('p', { class: 'muted' }, 'docs/FORWARDING.md has the guarantees and limits; README.md a PostgreSQL example.')));
      return;
    }
    const s = forwardSummary(rules);
    summary.textContent = s.text;
    summary.className = `summary ${s.bad ? 'summary-bad' : ''}`;
    replace(body, h('div', { class: 'rules' }, rules.map(ruleCard)));
  }

  function ruleCard(r) {
    const headingId = uid('rule');
    const filters = Array.isArray(r.filters) ? r.filters : [];
    const bad = r.state === 'down' || r.full;
    const warnings = [];
    if (r.full) {
      warnings.push(h('div', { class: 'warn', 'data-testid': 'forward-full' },
        h('p', null, h('strong', null, 'Spool full: publishers are being slowed: acknowledgements held. ')),
        h('p', null, 'Publishers of matching QoS 1/2 messages wait for their acknowledgements until the spool is below nine tenths of its bound; matching QoS 0 messages are dropped. Nobody is disconnected. Bring the sink back, or raise [limits] forward_spool_messages / forward_spool_bytes.')));
    }
    if (r.state === 'down') {
      warnings.push(h('div', { class: 'warn', 'data-testid': 'forward-down' },
        h('p', null, h('strong', null, 'The sink is down: '), 'the last write failed; messages wait in the spool and the write is retried until it succeeds.'),
        h('p', null, 'Check that the sink is running and reachable at its address; the broker\'s log names the error.')));
    }
    const spooled = `${fmtNum(r.spooled ?? 0)} ${r.spooled === 1 ? 'message' : 'messages'}, ${fmtBytes(r.spooled_bytes)}`;
    return h('section', {
      class: `card rule${bad ? ' rule-bad' : ''}`, 'aria-labelledby': headingId,
      'data-testid': 'forward-rule', 'data-rule': r.rule, 'data-state': r.state, 'data-full': r.full ? 'true' : 'false',
    },
    h('div', { class: 'card-head' },
      h('h2', { id: headingId }, h('span', { class: 'visually-hidden' }, 'Rule '), r.rule),
      h('span', { class: 'badges' },
        sinkBadge(r.state),
        r.full ? h('span', { class: 'badge lvl-7d', 'data-testid': 'forward-full-badge' }, h('span', { 'aria-hidden': 'true' }, '! '), 'Spool full') : null)),
    warnings,
    dl([
      ['Filters', filters.length ? h('ul', { class: 'inline-list' }, filters.map((f) => h('li', null, h('code', null, f)))) : '—', 'forward-filters'],
      ['Sink', r.sink || '—', 'forward-sink'],
      ['Spooled', h('span', { 'data-spooled': String(r.spooled ?? 0) }, spooled), 'forward-spooled'],
      ['Oldest waiting', r.spooled ? fmtDuration(r.oldest_age_seconds) : 'nothing waits', 'forward-oldest'],
      ['Forwarded', fmtNum(r.forwarded), 'forward-forwarded'],
      ['Retries', fmtNum(r.retries), 'forward-retries'],
      ['QoS 0 dropped', fmtNum(r.dropped_qos0), 'forward-dropped'],
    ]));
  }

  // ---------------------------------------------------------------- users

  pages.users = async (main) => {
    heading(main, 'Users', 'The password file: changes apply at once, without dropping clients.');
    const ro = readOnlyNote();
    if (ro) main.appendChild(ro);
    const result = h('div', { 'aria-live': 'polite', 'data-testid': 'users-result' });
    const listArea = h('div');
    const load = async () => {
      const users = await api('GET', url('users'));
      replace(listArea, table([
        { label: 'User name', cell: (u) => u.username },
        { label: 'Hash', cell: (u) => u.scheme || '—' },
        ...(session.isAdmin ? [{ label: 'Actions', cell: (u) => h('div', { class: 'row-actions' },
          h('button', { type: 'button', class: 'secondary', 'data-testid': 'user-passwd', onclick: () => changePassword(u.username) }, 'Change password…'),
          h('button', { type: 'button', class: 'danger', 'data-testid': 'user-remove', onclick: () => removeUser(u.username) }, 'Remove…')) }] : []),
      ], users || [], {
        testid: 'users-table', empty: 'No user yet.',
        rowAttrs: (u) => ({ 'data-testid': 'user-row', 'data-username': u.username }),
      }));
    };
    async function changePassword(name) {
      const pw = h('input', { type: 'password', autocomplete: 'new-password', required: true, 'data-testid': 'dialog-password' });
      const v = await modal({
        title: `New password for ${name}`,
        body: field('New password', pw),
        buttons: [
          { label: 'Cancel', value: null, class: 'secondary', testid: 'dialog-cancel' },
          { label: 'Change password', submit: true, testid: 'dialog-confirm', validate: () => !!pw.value || (pw.focus(), false), collect: () => pw.value },
        ],
      });
      if (v === null) return;
      try {
        await api('PUT', url(`users/${enc(name)}/password`), { password: v });
        replace(result, okBox(h('p', null, `The password of ${name} was changed.`)));
      } catch (err) { replace(result, errorBox(err)); }
    }
    async function removeUser(name) {
      if (!await confirmDialog(`Remove ${name}?`, h('p', null, `${name} will no longer be able to log in with a password. Connected clients stay connected.`), 'Remove', true)) return;
      try {
        await api('DELETE', url(`users/${enc(name)}`));
        replace(result, okBox(h('p', null, `${name} was removed.`)));
        await load();
      } catch (err) { replace(result, errorBox(err)); }
    }
    if (session.isAdmin) {
      const name = h('input', { type: 'text', name: 'username', autocomplete: 'off', required: true, spellcheck: 'false', 'data-testid': 'user-add-name' });
      const pw = h('input', { type: 'password', name: 'password', autocomplete: 'new-password', required: true, 'data-testid': 'user-add-password' });
      const btn = h('button', { type: 'submit', 'data-testid': 'user-add-submit' }, 'Add user');
      const form = h('form', { class: 'card inline-form', novalidate: true, 'aria-label': 'Add a user' },
        h('h2', null, 'Add a user'), field('User name', name), field('Password', pw), h('div', { class: 'actions' }, btn));
      form.addEventListener('submit', async (ev) => {
        ev.preventDefault();
        if (!name.value.trim() || !pw.value) {
          replace(result, h('div', { class: 'error', role: 'alert', 'data-testid': 'error' }, 'Enter a user name and a password.'));
          return;
        }
        btn.disabled = true;
        try {
          await api('POST', url('users'), { username: name.value.trim(), password: pw.value });
          replace(result, okBox(h('p', { 'data-testid': 'user-added' }, `${name.value.trim()} was added.`)));
          announce(`User ${name.value.trim()} added.`);
          form.reset();
          await load();
        } catch (err) { replace(result, errorBox(err)); } finally { btn.disabled = false; }
      });
      main.appendChild(form);
    }
    append(main, [result, h('section', { class: 'card' }, listArea)]);
    await load();
  };

  // ---------------------------------------------------------------- ACL

  pages.acl = async (main) => {
    heading(main, 'Access control', 'The ACL file (TOML). It is checked before it is written; the new rules apply at once.');
    const ro = readOnlyNote();
    if (ro) main.appendChild(ro);
    let acl;
    try {
      acl = await api('GET', url('acl'));
    } catch (err) {
      main.appendChild(errorBox(err));
      return;
    }
    const text = h('textarea', { rows: '20', spellcheck: 'false', autocomplete: 'off', class: 'code', 'data-testid': 'acl-text', readOnly: !session.isAdmin, value: acl.text || '' });
    const info = h('p', { class: 'muted', 'data-testid': 'acl-info' }, `${acl.path || 'ACL file'}: ${plural(acl.rules ?? 0, 'rule')}.`);
    const result = h('div', { 'aria-live': 'polite', 'data-testid': 'acl-result' });
    const form = h('form', { class: 'card', novalidate: true }, info, field('ACL file', text));
    if (session.isAdmin) {
      const save = h('button', { type: 'submit', 'data-testid': 'acl-save' }, 'Save');
      form.appendChild(h('div', { class: 'actions' }, save));
      form.addEventListener('submit', async (ev) => {
        ev.preventDefault();
        save.disabled = true;
        clear(result);
        try {
          const r = await api('PUT', url('acl'), { text: text.value });
          replace(result, okBox(h('p', { 'data-testid': 'acl-saved' }, `Saved: ${plural(r.rules ?? 0, 'rule')} in force.`)));
          info.textContent = `${acl.path || 'ACL file'}: ${plural(r.rules ?? 0, 'rule')}.`;
          announce('ACL saved.');
        } catch (err) {
          const lines = err.errors.length ? h('ul', { class: 'line-errors', 'data-testid': 'acl-errors' },
            err.errors.map((e) => h('li', { 'data-line': e.line ?? '' }, e.line != null ? `line ${e.line}: ${e.message}` : e.message))) : null;
          replace(result, errorBox(err, h('div', null,
            err.code === 'invalid_acl' ? h('p', null, 'Nothing was written; the rules in force are unchanged.') : null, lines)));
          const first = err.errors.find((e) => e.line);
          if (first) selectLine(text, first.line);
        } finally { save.disabled = false; }
      });
    }
    append(main, [form, result]);
  };
  // Selects a line of a textarea (1-based), to point at an error.
  function selectLine(ta, line) {
    const lines = ta.value.split('\n');
    if (line < 1 || line > lines.length) return;
    let start = 0;
    for (let i = 0; i < line - 1; i++) start += lines[i].length + 1;
    ta.focus();
    ta.setSelectionRange(start, start + lines[line - 1].length);
  }

  // ---------------------------------------------------------------- retained

  pages.retained = async (main, ctx) => {
    heading(main, 'Retained messages', 'Browse by topic prefix, one page at a time.');
    const ro = readOnlyNote();
    if (ro) main.appendChild(ro);
    const prefix = h('input', { type: 'search', name: 'prefix', autocomplete: 'off', 'data-testid': 'retained-prefix' });
    const form = h('form', { class: 'filters card', role: 'search', 'aria-label': 'Filter retained messages' }, field('Topic starts with', prefix));
    const status = h('p', { class: 'muted', 'aria-live': 'polite', 'data-testid': 'retained-status' });
    const listArea = h('div');
    const result = h('div', { 'aria-live': 'polite' });
    const firstBtn = h('button', { type: 'button', class: 'secondary', 'data-testid': 'first-page', disabled: true }, 'First page');
    const nextBtn = h('button', { type: 'button', class: 'secondary', 'data-testid': 'next-page', disabled: true }, 'Next page');
    append(main, [form, status, result, listArea, h('div', { class: 'actions pager' }, firstBtn, nextBtn)]);
    let seq = 0;
    let after = null;
    let page = 1;
    async function load(cursor, pageNo) {
      const mine = ++seq;
      try {
        const r = await api('GET', url('retained', { prefix: prefix.value, after: cursor, limit: 50 }));
        if (mine !== seq || current.name !== 'retained') return;
        const items = r.items || [];
        after = cursor;
        page = pageNo;
        replace(listArea, table([
          { label: 'Topic', cell: (m) => h('code', null, m.topic), class: 'wrap' },
          { label: 'QoS', cell: (m) => String(m.qos), class: 'num' },
          { label: 'Size', cell: (m) => fmtBytes(m.size), class: 'num' },
          { label: 'Payload', cell: (m) => payloadCell(m), class: 'wrap' },
          ...(session.isAdmin ? [{ label: 'Actions', cell: (m) => h('button', { type: 'button', class: 'danger', 'data-testid': 'retained-delete', onclick: () => del(m.topic) }, 'Delete…') }] : []),
        ], items, { testid: 'retained-table', empty: 'No retained message matches.', rowAttrs: (m) => ({ 'data-testid': 'retained-row', 'data-topic': m.topic }) }));
        status.textContent = `Page ${page}: ${plural(items.length, 'message')}${r.more ? ', more on the next page' : ''}.`;
        nextBtn.disabled = !r.more;
        firstBtn.disabled = page === 1;
        nextBtn.onclick = () => load(r.next_after ?? (items.length ? items[items.length - 1].topic : cursor), page + 1);
      } catch (err) {
        if (mine === seq) replace(listArea, errorBox(err));
      }
    }
    async function del(topic) {
      if (!await confirmDialog('Delete the retained message?', h('p', null, `The retained message on ${topic} will be deleted. New subscribers will no longer receive it.`), 'Delete', true)) return;
      try {
        const r = await api('DELETE', url('retained', { topic }));
        replace(result, okBox(h('p', null, r.deleted ? `Deleted the retained message on ${topic}.` : `There was no retained message on ${topic}.`)));
        await load(after, page);
      } catch (err) { replace(result, errorBox(err)); }
    }
    function payloadCell(m) {
      if (m.payload != null) {
        const t = m.payload.length > 200 ? `${m.payload.slice(0, 200)}…` : m.payload;
        return h('span', { class: 'payload' }, t);
      }
      const b = m.payload_base64 || '';
      return h('span', { class: 'muted' }, `binary, base64: ${b.length > 80 ? `${b.slice(0, 80)}…` : b}`);
    }
    firstBtn.onclick = () => load(null, 1);
    const refilter = debounce(() => load(null, 1), DEBOUNCE_MS);
    form.addEventListener('input', refilter);
    form.addEventListener('submit', (ev) => { ev.preventDefault(); refilter.cancel(); load(null, 1); });
    ctx.onCleanup(() => { refilter.cancel(); seq++; });
    await load(null, 1);
  };

  // ---------------------------------------------------------------- audit

  pages.audit = async (main) => {
    heading(main, 'Audit log', 'Every change and every login, newest first. No secret is ever written to it.');
    if (!session.isAdmin) {
      main.appendChild(h('p', { class: 'note' }, 'The audit log is for admins only.'));
      return;
    }
    const limit = h('select', { 'data-testid': 'audit-limit' }, [100, 500, 1000].map((n) => h('option', { value: String(n) }, String(n))));
    const listArea = h('div');
    const load = async () => {
      try {
        const items = await api('GET', url('audit', { limit: limit.value }));
        replace(listArea, table([
          { label: 'When', cell: (e) => fmtTime(e.at) },
          { label: 'Who', cell: (e) => e.who || '—' },
          { label: 'Address', cell: (e) => e.address || '—' },
          { label: 'Action', cell: (e) => h('code', null, e.action || '—'), class: 'wrap' },
          { label: 'Result', cell: (e) => h('span', { class: e.result === 'ok' ? 'badge lvl-ok' : 'badge lvl-7d' }, e.result || '—') },
        ], items || [], { testid: 'audit-table', empty: 'The audit log is empty.', rowAttrs: () => ({ 'data-testid': 'audit-row' }) }));
      } catch (err) { replace(listArea, errorBox(err)); }
    };
    limit.addEventListener('change', load);
    append(main, [h('div', { class: 'filters card' }, field('Entries', limit)), h('section', { class: 'card' }, listArea)]);
    await load();
  };

  pages.notfound = (main) => {
    heading(main, 'Page not found');
    main.appendChild(h('p', null, h('a', { href: '#/overview' }, 'Go to the overview')));
  };

  // ---------------------------------------------------------------- start

  async function logout() {
    try { await api('POST', `${API}/logout`); } catch (_) { /* the session may be gone already */ }
    session.clear();
    announce('Logged out.');
    go('login');
  }

  async function start() {
    document.getElementById('logout').addEventListener('click', logout);
    const skip = document.querySelector('.skip');
    if (skip) {
      skip.addEventListener('click', (ev) => {
        ev.preventDefault();
        document.getElementById('main').focus();
      });
    }
    session.load();
    // The cookie is the real session: ask the server whether it still lives.
    try {
      const s = await api('GET', `${API}/session`);
      session.set(s.role, s.csrf);
    } catch (_) {
      session.clear();
      if (location.hash && location.hash !== '#/login') {
        try { sessionStorage.setItem('moat.after-login', location.hash); } catch (__) { /* ignore */ }
      }
    }
    window.addEventListener('hashchange', route);
    route();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
