// harness.test.mjs: checks that whip_call.mjs measures what it claims, with no fairvox server involved.
//
//   node --test tests/webrtc/harness.test.mjs      (needs /usr/bin/chromium and npm ci --prefix tests/webrtc)
//
// Two halves. The audio half runs --self-test (fake microphone -> pc1 -> pc2 inside the page) with a 1 kHz sine and
// with silence: the analyser must find the tone in the first and nothing in the second. The HTTP half points the
// page at a stub WHIP server on another loopback port (a different origin, so Chromium runs real CORS preflights)
// and checks what the stub received and what the JSON reports: refusals with their JSON body, a server that sends
// no CORS headers, Retry-After behind CORS, and a 201 whose relative Location the page DELETEs on hang-up.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import dgram from 'node:dgram';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const WHIP_CALL = path.join(HERE, 'whip_call.mjs');
const TOKEN = 'fvk_harness_selftest_0123456789';

let dir;
let toneWav;
let silentWav;

before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fairvox-webrtc-test-'));
  toneWav = path.join(dir, 'tone1000.wav');
  silentWav = path.join(dir, 'silence.wav');
  // 3 s each; Chromium loops the file. The same as `sox -n -r 48000 -c 1 -b 16 F synth 3 sine 1000` (at -1 dBFS,
  // without sox's dither) and `... trim 0 3`, written here so the test needs no sox.
  fs.writeFileSync(toneWav, wav16(48000, 3, (t) => 0.89 * Math.sin(2 * Math.PI * 1000 * t)));
  fs.writeFileSync(silentWav, wav16(48000, 3, () => 0));
});

// A mono 16-bit PCM WAV file of `seconds` of signal(t), t in seconds, |signal| <= 1.
function wav16(rate, seconds, signal) {
  const n = rate * seconds;
  const b = Buffer.alloc(44 + 2 * n);
  b.write('RIFF', 0);
  b.writeUInt32LE(36 + 2 * n, 4);
  b.write('WAVEfmt ', 8);
  b.writeUInt32LE(16, 16); // fmt chunk size
  b.writeUInt16LE(1, 20); // PCM
  b.writeUInt16LE(1, 22); // mono
  b.writeUInt32LE(rate, 24);
  b.writeUInt32LE(2 * rate, 28); // bytes a second
  b.writeUInt16LE(2, 32); // bytes a frame
  b.writeUInt16LE(16, 34); // bits a sample
  b.write('data', 36);
  b.writeUInt32LE(2 * n, 40);
  for (let i = 0; i < n; i++) b.writeInt16LE(Math.round(32767 * signal(i / rate)), 44 + 2 * i);
  return b;
}

after(() => fs.rmSync(dir, { recursive: true, force: true }));

// Runs whip_call.mjs; resolves with its exit code, the parsed JSON line (or null) and stderr.
function whipCall(args) {
  return new Promise((resolve) => {
    execFile(process.execPath, [WHIP_CALL, ...args], { timeout: 60000 }, (error, stdout, stderr) => {
      const lines = stdout.split('\n').filter((l) => l.trim());
      let json = null;
      if (lines.length === 1) json = JSON.parse(lines[0]);
      resolve({ code: error ? error.code ?? 'killed' : 0, json, stdout, stderr });
    });
  });
}

describe('self-test: fake microphone -> pc1 -> pc2 -> analyser', () => {
  test('a 1 kHz sine is heard as 1 kHz in most 100 ms samples', async () => {
    const r = await whipCall(['--self-test', '--wav', toneWav, '--seconds', '2', '--tone-hz', '1000']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.json.error, null);
    const a = r.json.remote_audio;
    assert.ok(a.samples >= 15, `only ${a.samples} samples in 2 s`);
    assert.ok(a.frames >= 80, `only ${a.frames} RTP packets received in 2 s`);
    assert.ok(Math.abs(a.peak_hz_median - 1000) <= a.tol_hz, `peak at ${a.peak_hz_median} Hz`);
    assert.ok(a.tone_hits >= 0.8 * a.samples, `tone in ${a.tone_hits} of ${a.samples} samples`);
    assert.ok(a.rms_max > 0.1, `rms_max ${a.rms_max}`);
  });

  test('the same tone is not counted at 700 Hz', async () => {
    const r = await whipCall(['--self-test', '--wav', toneWav, '--seconds', '1', '--tone-hz', '700']);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(r.json.remote_audio.loud_samples >= 5);
    assert.equal(r.json.remote_audio.tone_hits, 0);
  });

  test('silence is heard as silence: no loud sample, no tone hit', async () => {
    const r = await whipCall(['--self-test', '--wav', silentWav, '--seconds', '2', '--tone-hz', '1000']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.json.error, null);
    const a = r.json.remote_audio;
    assert.ok(a.frames >= 80, `only ${a.frames} RTP packets received in 2 s`);
    assert.ok(a.samples >= 15);
    assert.equal(a.tone_hits, 0);
    assert.equal(a.loud_samples, 0);
    assert.equal(a.peak_hz_median, null);
    assert.ok(a.rms_max < 0.001, `rms_max ${a.rms_max}`);
  });
});

// A stand-in for fairvox's WHIP endpoint: records every request and answers POST as `answer(req, body)` says.
async function stubWhip({ cors = true, expose = 'Location', answer }) {
  const requests = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      requests.push({ method: req.method, url: req.url, headers: req.headers, body });
      const headers = cors
        ? {
            'Access-Control-Allow-Origin': '*',
            'Access-Control-Allow-Headers': 'Authorization, Content-Type',
            'Access-Control-Allow-Methods': 'POST, DELETE, PATCH, OPTIONS',
            'Access-Control-Expose-Headers': expose,
          }
        : {};
      if (req.method === 'OPTIONS') {
        res.writeHead(204, headers);
        res.end();
      } else if (req.method === 'POST' && req.url.startsWith('/whip/')) {
        const a = answer(req, body);
        res.writeHead(a.status, { ...headers, ...a.headers });
        res.end(a.body);
      } else if (req.method === 'DELETE' && req.url.startsWith('/whip/sessions/')) {
        res.writeHead(200, headers);
        res.end();
      } else {
        res.writeHead(404, { ...headers, 'Content-Type': 'application/json' });
        res.end('{"error":{"code":"not_found","message":"no such route"}}');
      }
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${server.address().port}`, requests, close: () => server.close() };
}

const jsonError = (status, code, extra = {}) => () => ({
  status,
  headers: { 'Content-Type': 'application/json', ...extra },
  body: JSON.stringify({ error: { code, message: `stub says ${code}` } }),
});

describe('POST path against a stub WHIP server on another origin', () => {
  test('a 400 comes back with its JSON body, after a CORS preflight, with the offer as sent', async () => {
    const stub = await stubWhip({ answer: jsonError(400, 'bad_sdp') });
    const offerFile = path.join(dir, 'offer.sdp');
    try {
      const r = await whipCall([
        '--whip-url', `${stub.url}/whip/app_1`, '--token', TOKEN, '--wav', toneWav, '--post-only',
        '--offer-file', offerFile,
      ]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.json.post_status, 400);
      assert.deepEqual(r.json.error_body, { error: { code: 'bad_sdp', message: 'stub says bad_sdp' } });
      assert.equal(r.json.error, 'POST answered 400');
      assert.equal(r.json.remote_audio, null);

      const [preflight, post, ...rest] = stub.requests;
      assert.equal(rest.length, 0, JSON.stringify(rest.map((q) => q.method)));
      assert.equal(preflight.method, 'OPTIONS');
      assert.equal(preflight.headers['access-control-request-method'], 'POST');
      assert.deepEqual(preflight.headers['access-control-request-headers'].split(',').sort(), ['authorization', 'content-type']);
      assert.match(preflight.headers.origin, /^http:\/\/127\.0\.0\.1:\d+$/);
      assert.notEqual(preflight.headers.origin, stub.url);

      assert.equal(post.method, 'POST');
      assert.equal(post.url, '/whip/app_1');
      assert.equal(post.headers.authorization, `Bearer ${TOKEN}`);
      assert.equal(post.headers['content-type'], 'application/sdp');
      // Non-trickle: the offer carries its candidates, 127.0.0.1 among them, and Opus on a sendrecv audio m-line.
      // (Chromium writes no a=end-of-candidates even after gathering completed.)
      assert.match(post.body, /^v=0\r\n/);
      assert.match(post.body, /^m=audio /m);
      assert.match(post.body, /^a=sendrecv\r$/m);
      assert.match(post.body, /^a=rtpmap:\d+ opus\/48000\/2\r$/m);
      assert.match(post.body, /^a=candidate:\S+ 1 udp \d+ 127\.0\.0\.1 \d+ typ host/m);
      assert.equal(fs.readFileSync(offerFile, 'utf8'), post.body);
    } finally {
      stub.close();
    }
  });

  test('a server without CORS headers is refused by the browser: the POST never reaches it', async () => {
    const stub = await stubWhip({ cors: false, answer: jsonError(400, 'bad_sdp') });
    try {
      const r = await whipCall(['--whip-url', `${stub.url}/whip/app_1`, '--token', TOKEN, '--wav', toneWav, '--post-only']);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.json.post_status, null);
      assert.match(r.json.error, /^POST .*Failed to fetch/);
      assert.deepEqual(stub.requests.map((q) => q.method), ['OPTIONS']);
    } finally {
      stub.close();
    }
  });

  test('Retry-After of a 503 reaches the page only when the server exposes it', async () => {
    for (const [expose, seen] of [['Location', null], ['Location, Retry-After', '7']]) {
      const stub = await stubWhip({ expose, answer: jsonError(503, 'overloaded', { 'Retry-After': '7' }) });
      try {
        const r = await whipCall(['--whip-url', `${stub.url}/whip/app_1`, '--token', TOKEN, '--wav', toneWav, '--post-only']);
        assert.equal(r.code, 0, r.stderr);
        assert.equal(r.json.post_status, 503);
        assert.equal(r.json.error_body.error.code, 'overloaded');
        assert.equal(r.json.retry_after, seen, `Expose-Headers: ${expose}`);
        const wirePost = r.json.wire.find((w) => w.method === 'POST');
        assert.equal(wirePost.retry_after, '7');
      } finally {
        stub.close();
      }
    }
  });

  test('a 201 answer is applied and its relative Location is DELETEd on hang-up', async () => {
    // An answer Chromium accepts but cannot connect to: its one candidate is a UDP socket that counts the STUN
    // binding requests it gets and answers none. The call must end with a clear "not connected" error after
    // --connect-timeout, and still hang up.
    const ice = dgram.createSocket('udp4');
    let bindingRequests = 0;
    ice.on('message', (m) => {
      if (m.length >= 20 && m.readUInt16BE(0) === 0x0001) bindingRequests += 1;
    });
    await new Promise((resolve) => ice.bind(0, '127.0.0.1', resolve));
    const answer = (req, offer) => ({
      status: 201,
      headers: { 'Content-Type': 'application/sdp', Location: '/whip/sessions/s_42' },
      body: answerFor(offer, ice.address().port),
    });
    const stub = await stubWhip({ answer });
    try {
      const r = await whipCall([
        '--whip-url', `${stub.url}/whip/app_1`, '--token', TOKEN, '--wav', toneWav, '--seconds', '1',
        '--connect-timeout', '2', '--hangup',
      ]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.json.post_status, 201);
      assert.equal(r.json.location, '/whip/sessions/s_42');
      assert.equal(r.json.answer_has_candidate, true);
      assert.equal(r.json.connected_ms, null);
      assert.match(r.json.error, /^not connected 2000 ms after the answer/, JSON.stringify(r.json));
      assert.equal(r.json.delete_status, 200);
      const del = stub.requests.find((q) => q.method === 'DELETE');
      assert.equal(del.url, '/whip/sessions/s_42');
      assert.equal(del.headers.authorization, `Bearer ${TOKEN}`);
      assert.ok(r.json.states.some((s) => s.what === 'ice' && s.state === 'checking'), JSON.stringify(r.json.states));
      assert.ok(bindingRequests > 0, 'no STUN binding request reached the answer\'s candidate');
    } finally {
      stub.close();
      ice.close();
    }
  });
});

// A syntactically valid answer to `offer`: the offer's audio m-line and codecs, passive DTLS, made-up ICE
// credentials and fingerprint, one host candidate: 127.0.0.1:port.
function answerFor(offer, port) {
  const lines = offer.split('\r\n');
  const mLine = lines.find((l) => l.startsWith('m=audio '));
  const mid = lines.find((l) => l.startsWith('a=mid:'));
  const codecLines = lines.filter((l) => /^a=(rtpmap|fmtp|rtcp-fb):/.test(l));
  const fingerprint = Array.from({ length: 32 }, (_, i) => (i * 7 + 16).toString(16).padStart(2, '0').toUpperCase());
  return [
    'v=0',
    'o=- 1 1 IN IP4 127.0.0.1',
    's=-',
    't=0 0',
    'a=ice-lite',
    `a=group:BUNDLE ${mid.slice('a=mid:'.length)}`,
    mLine.replace(/^m=audio \d+/, `m=audio ${port}`),
    'c=IN IP4 127.0.0.1',
    'a=rtcp-mux',
    mid,
    'a=sendrecv',
    'a=ice-ufrag:stub',
    'a=ice-pwd:stubstubstubstubstubstub',
    `a=fingerprint:sha-256 ${fingerprint.join(':')}`,
    'a=setup:passive',
    ...codecLines,
    `a=candidate:1 1 udp 2130706431 127.0.0.1 ${port} typ host`,
    'a=end-of-candidates',
    '',
  ].join('\r\n');
}
