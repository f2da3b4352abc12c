// Boilerhouse dashboard: live refresh from /events, ticking ages and countdowns,
// and actions through the JSON API (the same routes clients use). Hand-written,
// no dependencies. Text from the server is set with textContent, never as HTML.
(function () {
  'use strict';

  var flash = document.getElementById('flash');

  function say(message, isError) {
    if (!flash) return;
    flash.textContent = message;
    flash.className = isError ? 'error' : '';
    flash.setAttribute('role', isError ? 'alert' : 'status');
  }

  // Calls the API; resolves with the JSON body, rejects with the API's error sentence.
  function api(method, path, body) {
    var init = { method: method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    return fetch(path, init).then(function (r) {
      return r.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
        if (!r.ok) {
          var sentence = data && data.error ? data.error : (method + ' ' + path + ' answered ' + r.status);
          throw new Error(sentence);
        }
        return data;
      });
    });
  }

  // ---- ages and countdowns ----------------------------------------------------
  function span(ms) {
    var s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return s + 's';
    var m = Math.floor(s / 60);
    if (m < 60) return m + 'm ' + (s % 60) + 's';
    var h = Math.floor(m / 60);
    return h + 'h ' + (m % 60) + 'm';
  }
  function tick() {
    var now = Date.now();
    document.querySelectorAll('[data-since]').forEach(function (el) {
      var t = Date.parse(el.getAttribute('data-since'));
      if (!isNaN(t)) el.textContent = span(now - t);
    });
    document.querySelectorAll('[data-deadline]').forEach(function (el) {
      var t = Date.parse(el.getAttribute('data-deadline'));
      if (isNaN(t)) return;
      el.textContent = t > now ? 'in ' + span(t - now) : 'due';
    });
  }

  // ---- live refresh -------------------------------------------------------------
  // On every event, fetch this page again and swap its [data-live] regions. One
  // fetch at a time; events that arrive meanwhile cause one more.
  var busy = false, again = false;
  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(location.href, { credentials: 'same-origin' })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null) return;
        var doc = new DOMParser().parseFromString(html, 'text/html');
        var focused = document.activeElement && document.activeElement.id;
        document.querySelectorAll('[data-live]').forEach(function (el) {
          var fresh = doc.getElementById(el.id);
          if (fresh) el.replaceWith(document.importNode(fresh, true));
        });
        if (focused && document.activeElement === document.body) {
          var again_ = document.getElementById(focused);
          if (again_) again_.focus();
        }
        tick();
      })
      // A failed fetch (the daemon restarting, a network change the browser noticed)
      // is tried again in a second rather than at the next event, which may not come.
      .catch(function () { setTimeout(refresh, 1000); })
      .then(function () {
        busy = false;
        if (again) { again = false; refresh(); }
      });
  }

  var live = document.getElementById('live');
  var source = null;
  function connect() {
    source = new EventSource('/events');
    var kinds = (document.body.getAttribute('data-events') || '').split(' ').concat(['lagged']);
    kinds.forEach(function (kind) { if (kind) source.addEventListener(kind, refresh); });
    source.onopen = function () {
      if (live) { live.textContent = 'live'; live.className = 'live-dot on'; }
    };
    source.onerror = function () {
      if (live) { live.textContent = 'reconnecting'; live.className = 'live-dot'; }
    };
  }
  function follow() {
    if (!document.querySelector('[data-live]') || !window.EventSource) return;
    connect();
    // A page the user left keeps no stream open: the browser allows six connections
    // per host, and pages it keeps for Back would otherwise hold theirs, so the
    // seventh page waited. Coming back (Back) reconnects and catches up.
    window.addEventListener('pagehide', function () {
      if (source) { source.close(); source = null; }
      if (live) { live.textContent = 'offline'; live.className = 'live-dot'; }
    });
    window.addEventListener('pageshow', function (ev) {
      if (ev.persisted && !source) { connect(); refresh(); }
    });
    // Ages tick locally; a slow periodic refresh catches what no event announces.
    setInterval(refresh, 15000);
  }

  // ---- actions --------------------------------------------------------------------
  function showResults(results) {
    var box = document.getElementById('sync-results');
    if (!box) return;
    box.textContent = '';
    var table = document.createElement('table');
    var head = table.createTHead().insertRow();
    ['Path', 'Direction', 'Result', 'Bytes', 'Files', 'Errors'].forEach(function (h) {
      var th = document.createElement('th'); th.scope = 'col'; th.textContent = h; head.appendChild(th);
    });
    var body = table.createTBody();
    (results || []).forEach(function (r) {
      var row = body.insertRow();
      [r.path, r.direction, r.success ? 'ok' : 'failed', r.bytesTransferred, r.filesTransferred,
        (r.errors || []).join('; ')].forEach(function (v) {
        row.insertCell().textContent = v === undefined || v === null ? '' : String(v);
      });
    });
    box.appendChild(table);
  }

  function describe(data) {
    if (!data) return 'Done.';
    if (data.message) return data.message;
    if (data.released) return 'Released ' + data.released.map(function (r) { return r.containerId; }).join(', ') + '.';
    if (data.containerId && data.success) return 'Destroyed ' + data.containerId + '.';
    if (data.results) return data.success ? 'Sync finished.' : 'Sync finished with failures.';
    return 'Done.';
  }

  function run(el, method, path, body) {
    var first = el.getAttribute('data-confirm');
    if (first && !window.confirm(first)) return;
    var second = el.getAttribute('data-confirm2');
    if (second && !window.confirm(second)) return;
    el.setAttribute('disabled', '');
    say('Working…', false);
    api(method, path, body)
      .then(function (data) {
        say(describe(data), false);
        if (el.hasAttribute('data-results') && data) showResults(data.results);
        refresh();
      })
      .catch(function (e) { say(e.message, true); })
      .then(function () { el.removeAttribute('disabled'); });
  }

  document.addEventListener('click', function (ev) {
    var el = ev.target.closest('button[data-path]');
    if (!el) return;
    var body;
    var raw = el.getAttribute('data-body');
    if (raw) {
      try { body = JSON.parse(raw); } catch (e) { say('bad action body: ' + e.message, true); return; }
    }
    run(el, el.getAttribute('data-method') || 'POST', el.getAttribute('data-path'), body);
  });

  document.addEventListener('submit', function (ev) {
    var form = ev.target;
    if (!form.hasAttribute('data-path')) return;
    ev.preventDefault();
    var body = {};
    Array.prototype.forEach.call(form.elements, function (input) {
      if (!input.name) return;
      body[input.name] = input.getAttribute('data-type') === 'number' ? Number(input.value) : input.value;
    });
    run(form.querySelector('button[type=submit]') || form, form.getAttribute('data-method') || 'POST',
      form.getAttribute('data-path'), body);
  });

  // ---- try a claim ------------------------------------------------------------------
  // Warm = the granted container was idle before the claim; cold = it was created for
  // it; reused = the tenant already held it. Latency is measured here, round trip.
  var tryForm = document.getElementById('try-form');
  if (tryForm) {
    tryForm.addEventListener('submit', function (ev) {
      ev.preventDefault();
      var tenant = tryForm.elements.tenant.value.trim();
      var pool = tryForm.elements.pool.value;
      var out = document.getElementById('try-result');
      var button = tryForm.querySelector('button');
      button.setAttribute('disabled', '');
      say('Claiming…', false);
      api('GET', '/containers?poolId=' + encodeURIComponent(pool))
        .then(function (before) {
          var idle = {};
          (before || []).forEach(function (c) { if (c.status === 'idle') idle[c.id] = true; });
          var started = performance.now();
          return api('POST', '/tenants/' + encodeURIComponent(tenant) + '/claim', { poolId: pool })
            .then(function (grant) {
              var ms = performance.now() - started;
              var outcome = grant.reused ? 'reused' : (idle[grant.containerId] ? 'warm' : 'cold');
              out.textContent = '';
              var div = document.createElement('div'); div.className = 'result';
              var big = document.createElement('p'); big.className = 'outcome'; big.id = 'try-outcome';
              big.textContent = outcome;
              div.appendChild(big);
              var dl = document.createElement('dl');
              [['Latency', ms.toFixed(1) + ' ms'], ['Container', grant.containerId],
                ['Name', grant.containerName], ['Pool', grant.poolId], ['Socket', grant.endpoints && grant.endpoints.socket]]
                .forEach(function (pair) {
                  var dt = document.createElement('dt'); dt.textContent = pair[0];
                  var dd = document.createElement('dd'); dd.textContent = pair[1] || '';
                  dl.appendChild(dt); dl.appendChild(dd);
                });
              div.appendChild(dl);
              var link = document.createElement('a');
              link.href = '/ui/tenants/' + encodeURIComponent(tenant);
              link.textContent = 'Open ' + tenant + ' (release from there)';
              div.appendChild(link);
              out.appendChild(div);
              say('Claimed ' + grant.containerId + ' for ' + tenant + '.', false);
            });
        })
        .catch(function (e) { say(e.message, true); })
        .then(function () { button.removeAttribute('disabled'); });
    });
  }

  tick();
  setInterval(tick, 1000);
  follow();
})();
