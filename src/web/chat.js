// The chat page's script. It joins the room of the page's own path, speaks
// broadcast-chat.v1 (the README's "Structured protocol"), and resumes after a lost
// connection as the command-line client does: a session id per tab, the last offset
// seen, lines sent with increasing ids and sent again until acknowledged. Every
// text from the network is put in the page as text, never as markup.
'use strict';

(() => {
  const PROTOCOL = 'broadcast-chat.v1';
  // The token travels as a subprotocol entry, never in the URL (see the README).
  const TOKEN_PREFIX = 'bearer.';
  const NAME_RULE = /^[A-Za-z0-9._-]{1,32}$/;
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 30000;
  // Close codes after which trying again may help, as the command-line client has
  // them; 1006 is a connection lost without a close frame.
  const TRANSIENT_CLOSES = new Set([1001, 1006, 1011, 1012, 1013]);
  // The close code of a session whose signed token expired: ask for a new one.
  const TOKEN_EXPIRED = 4001;
  // Items kept in the page; older ones go once the reader is at the bottom.
  const MAX_ITEMS = 2000;
  const NAME_KEY = 'broadcast-chat.name';
  const TOKEN_KEY = 'broadcast-chat.token';

  const $ = (id) => document.getElementById(id);
  const ui = {
    room: $('room'), me: $('me'), state: $('state'), stateText: $('state-text'),
    retry: $('retry'), log: $('log'), messages: $('messages'), pending: $('pending'),
    jump: $('jump'), nameForm: $('name-form'), nameInput: $('name-input'),
    tokenForm: $('token-form'), tokenLabel: $('token-label'), tokenInput: $('token-input'),
    tokenRemember: $('token-remember'), composer: $('composer'), input: $('input'),
  };

  // The room of this page's path, as the server reads it: `/rust` is `rust`, `/` the lobby.
  const room = location.pathname.replace(/^\//, '').replace(/\/+$/, '');
  const sessionKey = `broadcast-chat.session./${room}`;

  // Storage can be refused (privacy modes): then nothing is remembered.
  const store = {
    get(area, key) { try { return area.getItem(key); } catch { return null; } },
    set(area, key, value) { try { area.setItem(key, value); } catch { /* not kept */ } },
    remove(area, key) { try { area.removeItem(key); } catch { /* nothing kept */ } },
  };

  // What this tab keeps across its connections (and a reload), per room.
  const session = loadSession();
  let name = store.get(localStorage, NAME_KEY);
  if (name !== null && !NAME_RULE.test(name)) name = null;
  let token = store.get(localStorage, TOKEN_KEY);
  let socket = null;     // the current WebSocket, if any
  let live = false;      // welcomed on the current socket
  let everLive = false;  // welcomed once on this page
  let echo = true;       // whether our own lines come back to us
  let attempt = 0;       // failed attempts since the last welcome
  let retryTimer = null;
  // Our lines acknowledged and not yet come back, by their offset.
  const awaited = new Map();

  function loadSession() {
    try {
      const kept = JSON.parse(store.get(sessionStorage, sessionKey));
      if (kept && typeof kept.id === 'string' && Number.isSafeInteger(kept.next)) return kept;
    } catch { /* start afresh */ }
    const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    const id = Array.from(bytes, (b) => alphabet[b % alphabet.length]).join('');
    // epoch and after: where we are in the room; unacked: [id, text] not yet
    // acknowledged; tags: how the server tagged us on each connection.
    return { id, next: 1, epoch: null, after: 0, unacked: [], tags: [] };
  }

  function saveSession() {
    store.set(sessionStorage, sessionKey, JSON.stringify(session));
  }

  // --- The connection's state, always in view. ---

  function setState(state, text, title) {
    ui.state.dataset.state = state;
    ui.stateText.textContent = text;
    ui.state.title = title || '';
    ui.retry.hidden = !(state === 'closed' || state === 'refused');
  }

  function serverUrl() {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return `${scheme}//${location.host}/${room}`;
  }

  function connect() {
    clearTimeout(retryTimer);
    retryTimer = null;
    if (socket) {
      const old = socket;
      socket = null;
      old.close(1000, 'bye');
    }
    const params = new URLSearchParams({ name, session: session.id });
    if (session.epoch) {
      params.set('epoch', session.epoch);
      params.set('after', String(session.after));
    }
    const protocols = [PROTOCOL];
    if (token) protocols.push(TOKEN_PREFIX + base64url(token));
    setState('connecting', everLive ? 'Reconnecting…' : 'Connecting…', serverUrl());
    let ws;
    try {
      ws = new WebSocket(`${serverUrl()}?${params}`, protocols);
    } catch (error) {
      setState('closed', 'Cannot connect', String(error.message || error));
      return;
    }
    socket = ws;
    live = false;
    let opened = false;
    ws.onopen = () => { opened = true; };
    ws.onmessage = (event) => {
      if (ws === socket && typeof event.data === 'string') receive(event.data);
    };
    ws.onclose = (event) => {
      if (ws !== socket) return;
      socket = null;
      live = false;
      if (!opened) {
        findOutWhy();
      } else if (TRANSIENT_CLOSES.has(event.code)) {
        retryLater('Connection lost');
      } else if (event.code === TOKEN_EXPIRED) {
        askToken('expired');
      } else {
        const reason = event.reason ? ` (${event.reason})` : '';
        setState('closed', 'Disconnected', `the server closed the connection: ${event.code}${reason}`);
        say('notice error', `The server closed the connection: ${event.code}${reason}`);
      }
    };
  }

  // A browser does not tell a page why a WebSocket was refused, so ask the server
  // the same question in plain HTTP: 401 is the token, 403 this page's origin; 200
  // names the signed token's holder, whose name the page must join with.
  async function findOutWhy() {
    let status = 0;
    let holder = null;
    try {
      // A header holds printable ASCII only; without it, a 401 still says the
      // token we sent in the socket's protocols was not taken.
      const sendable = token !== null && /^[\x20-\x7e]+$/.test(token);
      const headers = sendable ? { Authorization: `Bearer ${token}` } : {};
      const answer = await fetch('/_/auth', { headers, cache: 'no-store' });
      status = answer.status;
      if (status === 200) holder = (await answer.json()).name;
    } catch { /* unreachable: status 0 */ }
    if (socket || retryTimer) return; // something else started meanwhile
    if (status === 401) {
      askToken(token !== null ? 'refused' : null);
    } else if (status === 200 && typeof holder === 'string' && holder !== name) {
      // With a signed token the name is the token's: join with it.
      name = holder;
      store.set(localStorage, NAME_KEY, name);
      showName();
      connect();
    } else if (status === 200) {
      setState('refused', 'Not allowed', 'the token does not allow this room');
      say('notice error', 'Your token does not allow this room.');
    } else if (status === 403) {
      setState('refused', 'Not allowed', 'the server does not allow this page\'s address (--allow-origin)');
      say('notice error', 'The server does not allow connections from this page\'s address.');
    } else {
      retryLater(status ? 'Cannot connect' : 'Server unreachable');
    }
  }

  function retryLater(why) {
    // 0.5 s doubling up to 30 s, spread by ±25% so that pages cut off together do
    // not all come back at once; as the command-line client's backoff.
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** Math.min(attempt, 20));
    attempt += 1;
    const wait = Math.min(BACKOFF_MAX_MS, Math.max(BACKOFF_MIN_MS, base * (0.75 + Math.random() / 2)));
    const seconds = (wait / 1000).toFixed(1);
    setState('waiting', `${everLive ? 'Reconnecting' : 'Retrying'} in ${seconds} s`,
      `${why} (${serverUrl()}); trying again in ${seconds} s`);
    retryTimer = setTimeout(() => { retryTimer = null; connect(); }, wait);
  }

  // Why: null (none was sent), 'refused' or 'expired'.
  function askToken(why) {
    if (why && store.get(localStorage, TOKEN_KEY) === token) store.remove(localStorage, TOKEN_KEY);
    const state = { refused: 'Token refused', expired: 'Token expired' }[why] || 'Token needed';
    setState('refused', state, serverUrl());
    ui.retry.hidden = true;
    ui.tokenLabel.textContent = {
      refused: 'The server refused that token. Enter the chat\'s token:',
      expired: 'Your token expired. Enter a new one to join again:',
    }[why] || 'This chat needs a token. Enter it to join:';
    show(ui.tokenForm, ui.tokenInput);
  }

  // --- What the server sends. ---

  function receive(data) {
    let frame;
    try { frame = JSON.parse(data); } catch { return; }
    switch (frame.type) {
      case 'welcome': welcomed(frame); break;
      case 'message': message(frame); break;
      case 'notice':
        seen(frame.epoch, frame.offset);
        say(frame.kind === 'slow-down' || frame.kind === 'missed' ? 'notice warn' : 'notice',
          String(frame.text).replace(/^\* /, ''));
        break;
      case 'recovered':
        if (!frame.complete && frame.text) say('notice warn', String(frame.text).replace(/^\* /, ''));
        break;
      case 'ack': acknowledged(frame); break;
      case 'error': say('notice error', `The server says: ${frame.text}`); break;
      default: break;
    }
  }

  function welcomed(frame) {
    live = true;
    attempt = 0;
    echo = frame.echo !== false;
    if (!session.tags.includes(frame.you)) session.tags.push(frame.you);
    // Our lines come back with the tag of the connection that sent them; a few
    // connections back is as far as a replay reaches in practice.
    if (session.tags.length > 32) session.tags.shift();
    // The same room as before: go on from our own position (the server replays what
    // we missed); otherwise from where the room is.
    if (session.epoch !== frame.epoch || session.after > frame.offset) {
      session.epoch = frame.epoch;
      session.after = frame.offset;
      // Lines the room that is gone took: they will not come back from this one.
      for (const li of awaited.values()) li.remove();
      awaited.clear();
    }
    setState('connected', 'Connected', `connected to ${serverUrl()} as ${frame.you}`);
    if (!everLive) say('notice', frame.text);
    everLive = true;
    // Lines not acknowledged yet go again; the server shows each once.
    for (const [id, text] of session.unacked) sendFrame({ type: 'send', id, text });
    for (const mark of ui.pending.querySelectorAll('.sending')) mark.textContent = 'sending…';
    saveSession();
  }

  function message(frame) {
    seen(frame.epoch, frame.offset);
    const pending = frame.epoch === session.epoch ? awaited.get(frame.offset) : undefined;
    if (pending) {
      awaited.delete(frame.offset);
      pending.remove();
    }
    say('message', frame.text, frame.from);
    saveSession();
  }

  function acknowledged(ack) {
    const done = [];
    while (session.unacked.length && session.unacked[0][0] <= ack.id) done.push(session.unacked.shift());
    for (const [id, text] of done) {
      const item = ui.pending.querySelector(`[data-id="${id}"]`);
      if (!echo) {
        // Our lines do not come back: show them as the room has them.
        if (item) item.remove();
        say('message', text, currentTag());
      } else if (!item) {
        // Shown already (sent from before a reload).
      } else if (id === ack.id && !ack.duplicate && ack.offset > session.after) {
        awaited.set(ack.offset, item);
        item.dataset.state = 'sent';
      } else {
        // Come back already, or accepted before (a repeat): shown once, in its place.
        item.remove();
      }
    }
    saveSession();
  }

  function seen(epoch, offset) {
    if (epoch && epoch === session.epoch && Number.isSafeInteger(offset)) {
      session.after = Math.max(session.after, offset);
    }
  }

  function currentTag() {
    return session.tags.length ? session.tags[session.tags.length - 1] : name;
  }

  // --- Sending. ---

  function sendFrame(frame) {
    if (socket && live && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(frame));
  }

  function submitLine(line) {
    if (line.trim() === '') return;
    if (line === '/who') {
      if (live) sendFrame({ type: 'who' });
      else say('notice warn', 'Not connected: /who needs the server.');
      return;
    }
    if (/^\/[^/]/.test(line)) {
      say('notice warn', `Unknown command ${line.split(/\s/)[0]}: /who asks who is here; start with // to send a line that begins with /.`);
      return;
    }
    const text = line.startsWith('//') ? line.slice(1) : line;
    const id = session.next;
    session.next += 1;
    session.unacked.push([id, text]);
    saveSession();
    showPending(id, text);
    sendFrame({ type: 'send', id, text });
  }

  // --- Rendering: always as text. ---

  function item(kind, text, from) {
    const li = document.createElement('li');
    li.className = kind;
    if (from === undefined) {
      const span = document.createElement('span');
      span.className = 'text';
      span.textContent = text;
      li.append(span);
      return li;
    }
    li.dataset.from = from;
    const at = from.indexOf('@');
    const sender = at >= 0 ? from.slice(0, at) : from;
    const meta = document.createElement('div');
    meta.className = 'meta';
    const nameSpan = document.createElement('span');
    nameSpan.className = `name hue-${hue(sender)}`;
    nameSpan.textContent = sender;
    meta.append(nameSpan);
    if (at >= 0) {
      const addr = document.createElement('span');
      addr.className = 'addr';
      addr.textContent = from.slice(at + 1);
      meta.append(addr);
    }
    const body = document.createElement('div');
    body.className = 'text';
    body.textContent = text;
    li.append(meta, body);
    return li;
  }

  // Puts a line in the log: kind is `message` (with its sender's tag) or `notice ...`.
  function say(kind, text, from) {
    const li = item(kind, text, from);
    if (from !== undefined) {
      if (session.tags.includes(from)) {
        li.classList.add('own');
        li.querySelector('.meta').append(youMark());
      }
      const last = ui.messages.lastElementChild;
      if (last && last.dataset.from === from) li.classList.add('cont');
    }
    append(ui.messages, li);
  }

  // Our line until the room has it, shown as it will be, so that it takes the
  // same room when it arrives.
  function showPending(id, text) {
    const from = currentTag() || 'you';
    const li = item('message own', text, from);
    li.dataset.id = String(id);
    li.dataset.state = 'sending';
    li.querySelector('.meta').append(youMark());
    const last = ui.messages.lastElementChild;
    if (ui.pending.childElementCount > 0 || (last && last.dataset.from === from)) li.classList.add('cont');
    const mark = document.createElement('span');
    mark.className = 'sending';
    mark.textContent = live ? 'sending…' : 'not sent yet';
    li.querySelector('.text').append(mark);
    append(ui.pending, li);
  }

  function youMark() {
    const mark = document.createElement('span');
    mark.className = 'you';
    mark.textContent = 'you';
    return mark;
  }

  function hue(text) {
    let h = 0;
    for (const c of text) h = (h * 31 + c.codePointAt(0)) >>> 0;
    return h % 8;
  }

  // Follows new lines only when the reader is at the bottom: someone reading back
  // is not pulled down, and is told that more came.
  function atBottom() {
    return ui.log.scrollHeight - ui.log.scrollTop - ui.log.clientHeight < 40;
  }

  function append(list, li) {
    const follow = atBottom();
    list.append(li);
    if (follow) {
      while (ui.messages.childElementCount > MAX_ITEMS) ui.messages.firstElementChild.remove();
      ui.log.scrollTop = ui.log.scrollHeight;
    } else {
      ui.jump.hidden = false;
    }
  }

  // --- Forms and keys. ---

  function show(form, focus) {
    for (const f of [ui.nameForm, ui.tokenForm, ui.composer]) f.hidden = f !== form;
    focus.focus();
  }

  function showName() {
    ui.me.hidden = !name;
    ui.me.textContent = name || '';
    ui.room.textContent = room ? `#${room}` : 'Lobby';
    document.title = `${room ? `#${room}` : 'Lobby'} · chat`;
  }

  ui.nameForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const wanted = ui.nameInput.value.trim();
    if (!NAME_RULE.test(wanted)) {
      ui.nameInput.setAttribute('aria-invalid', 'true');
      ui.nameForm.classList.add('invalid');
      return;
    }
    ui.nameInput.removeAttribute('aria-invalid');
    ui.nameForm.classList.remove('invalid');
    const changed = wanted !== name;
    name = wanted;
    store.set(localStorage, NAME_KEY, name);
    showName();
    show(ui.composer, ui.input);
    if (changed || !socket) connect();
  });

  ui.tokenForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const given = ui.tokenInput.value;
    if (given === '') return;
    token = given;
    ui.tokenInput.value = '';
    if (ui.tokenRemember.checked) store.set(localStorage, TOKEN_KEY, token);
    else store.remove(localStorage, TOKEN_KEY);
    attempt = 0;
    show(ui.composer, ui.input);
    connect();
  });

  ui.composer.addEventListener('submit', (event) => {
    event.preventDefault();
    const line = ui.input.value;
    ui.input.value = '';
    submitLine(line);
    ui.input.focus();
  });

  ui.me.addEventListener('click', () => {
    ui.nameInput.value = name || '';
    show(ui.nameForm, ui.nameInput);
  });

  ui.retry.addEventListener('click', () => {
    attempt = 0;
    connect();
    ui.input.focus();
  });

  ui.jump.addEventListener('click', () => {
    ui.log.scrollTop = ui.log.scrollHeight;
    ui.jump.hidden = true;
    ui.input.focus();
  });

  ui.log.addEventListener('scroll', () => {
    if (atBottom()) ui.jump.hidden = true;
  });

  // Back online: no need to wait for the next attempt.
  window.addEventListener('online', () => {
    if (retryTimer) connect();
  });

  function base64url(text) {
    const bytes = new TextEncoder().encode(text);
    let binary = '';
    for (const b of bytes) binary += String.fromCharCode(b);
    return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }

  // --- Start. ---

  showName();
  for (const [id, text] of session.unacked) showPending(id, text);
  if (name) {
    show(ui.composer, ui.input);
    connect();
  } else {
    setState('idle', 'Choose a name to join');
    show(ui.nameForm, ui.nameInput);
  }
})();
