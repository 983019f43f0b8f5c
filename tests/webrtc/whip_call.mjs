#!/usr/bin/env node
// whip_call.mjs: one WHIP call from headless Chromium, for fairvox's WebRTC end-to-end tests (issue 6).
//
// Owns the browser's side of the test: serves page.html from its own loopback origin, launches Debian's Chromium
// through playwright-core (never a downloaded browser) with a WAV as the fake microphone, lets the page make the
// call, and prints ONE JSON line on stdout describing what happened. It judges nothing: the Rust test reads the
// JSON and asserts. Exit 0 whenever the JSON was printed (a refused POST or a call that never connected is a
// result, not a harness failure); 2 on bad arguments; 3 when the harness itself failed (Chromium did not start,
// the hard timeout hit), with the reason on stderr. See README.md for the flags and the JSON.
//
//   node tests/webrtc/whip_call.mjs --whip-url URL --token TOKEN --wav FILE --seconds N [--tone-hz F] [--hangup]
//   node tests/webrtc/whip_call.mjs --self-test --wav FILE --seconds N [--tone-hz F]

import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const PAGE_HTML = path.join(HERE, 'page.html');
const CHROMIUM = process.env.FAIRVOX_CHROMIUM || '/usr/bin/chromium';

const USAGE = `usage:
  whip_call.mjs --whip-url URL --token TOKEN --wav FILE [--seconds N] [--tone-hz F] [--hangup]
                [--post-only] [--offer-file F] [--connect-timeout S] [--min-rms X] [--sink muted|unmuted|none]
                [--verbose]
  whip_call.mjs --self-test --wav FILE [--seconds N] [--tone-hz F] [--sink ...]`;

function usage(message) {
  process.stderr.write(`whip_call.mjs: ${message}\n${USAGE}\n`);
  process.exit(2);
}

function number(name, value, { min = 0, integer = false } = {}) {
  const n = Number(value);
  if (!Number.isFinite(n) || n < min || (integer && !Number.isInteger(n))) usage(`--${name} ${value}: not a number >= ${min}`);
  return n;
}

function parseOptions(argv) {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        'whip-url': { type: 'string' },
        token: { type: 'string' },
        wav: { type: 'string' },
        seconds: { type: 'string', default: '5' },
        'tone-hz': { type: 'string' },
        hangup: { type: 'boolean', default: false },
        'post-only': { type: 'boolean', default: false },
        'offer-file': { type: 'string' },
        'self-test': { type: 'boolean', default: false },
        'connect-timeout': { type: 'string', default: '8' },
        'min-rms': { type: 'string', default: '0.01' },
        sink: { type: 'string', default: 'muted' },
        verbose: { type: 'boolean', default: false },
        help: { type: 'boolean', default: false },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    usage(e.message);
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  const o = {
    selfTest: values['self-test'],
    whipUrl: values['whip-url'] ?? null,
    token: values.token ?? null,
    wav: values.wav,
    seconds: number('seconds', values.seconds),
    toneHz: values['tone-hz'] === undefined ? null : number('tone-hz', values['tone-hz'], { min: 1 }),
    hangup: values.hangup,
    postOnly: values['post-only'],
    offerFile: values['offer-file'] ?? null,
    connectTimeoutMs: number('connect-timeout', values['connect-timeout'], { min: 1 }) * 1000,
    minRms: number('min-rms', values['min-rms']),
    sink: values.sink,
    verbose: values.verbose,
  };
  if (!o.wav) usage('--wav FILE is required (the fake microphone)');
  o.wav = path.resolve(o.wav);
  try {
    fs.accessSync(o.wav, fs.constants.R_OK);
  } catch {
    usage(`--wav ${o.wav}: not a readable file`);
  }
  if (!['muted', 'unmuted', 'none'].includes(o.sink)) usage(`--sink ${o.sink}: one of muted, unmuted, none`);
  if (!o.selfTest) {
    if (!o.whipUrl) usage('--whip-url URL is required (or --self-test)');
    if (o.token === null) usage('--token TOKEN is required (or --self-test)');
    try {
      const u = new URL(o.whipUrl);
      if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error('not http(s)');
    } catch (e) {
      usage(`--whip-url ${o.whipUrl}: ${e.message}`);
    }
  }
  return o;
}

// Exactly the flags of /work/shared/TESTING.md "WebRTC" (README.md says why each is there), plus the two that
// Playwright itself needs once its defaults are off: the fresh profile and the pipe it drives Chromium through.
function chromiumArgs(wav, userDataDir) {
  return [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    `--user-data-dir=${userDataDir}`,
    '--allow-loopback-in-peer-connection',
    '--disable-features=WebRtcHideLocalIpsWithMdns',
    // One argv element, so no shell quotes around the value.
    '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
    '--use-fake-ui-for-media-stream',
    '--use-fake-device-for-media-stream',
    `--use-file-for-fake-audio-capture=${wav}`,
    '--remote-debugging-pipe',
  ];
}

// The page's own origin: a different port from the WHIP server, so the page's fetch is cross-origin.
function servePage() {
  const html = fs.readFileSync(PAGE_HTML);
  const server = http.createServer((req, res) => {
    if (req.method === 'GET' && (req.url === '/' || req.url === '/index.html')) {
      res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
      res.end(html);
    } else {
      res.writeHead(404, { 'Content-Type': 'text/plain' });
      res.end('not found\n');
    }
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve(server));
  });
}

// What went over the wire to the WHIP server, as Playwright saw it: the headers the page may not read (CORS hides
// all but the exposed ones) and the network error behind a bare "Failed to fetch".
function watchWire(page, whipUrl) {
  const origin = whipUrl ? new URL(whipUrl).origin : null;
  const wire = [];
  if (!origin) return wire;
  const mine = (request) => {
    try {
      return new URL(request.url()).origin === origin;
    } catch {
      return false;
    }
  };
  page.on('response', async (response) => {
    const request = response.request();
    if (!mine(request)) return;
    const entry = { method: request.method(), path: new URL(request.url()).pathname, status: response.status() };
    wire.push(entry);
    try {
      const headers = await response.allHeaders();
      entry.location = headers.location ?? null;
      entry.retry_after = headers['retry-after'] ?? null;
      entry.allow_origin = headers['access-control-allow-origin'] ?? null;
      entry.expose_headers = headers['access-control-expose-headers'] ?? null;
    } catch {
      // the page may be closing; the status is what matters
    }
  });
  page.on('requestfailed', (request) => {
    if (!mine(request)) return;
    wire.push({
      method: request.method(),
      path: new URL(request.url()).pathname,
      status: null,
      failure: request.failure()?.errorText ?? 'failed',
    });
  });
  return wire;
}

async function main() {
  const o = parseOptions(process.argv.slice(2));
  const hardTimeoutS = o.seconds + o.connectTimeoutMs / 1000 + 20;
  let browser = null;
  let server = null;
  // Everything this run writes lives under one directory, removed at the end even after the hard timeout: the
  // fresh Chromium profile, and (through TMPDIR, which Playwright and Chromium both read) their temp files.
  const runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'fairvox-chromium-'));
  const userDataDir = path.join(runDir, 'profile');
  fs.mkdirSync(userDataDir);
  process.env.TMPDIR = runDir;
  const cleanup = async () => {
    if (browser) await browser.close().catch(() => {});
    if (server) server.close();
    fs.rmSync(runDir, { recursive: true, force: true });
  };
  const hardTimeout = setTimeout(() => {
    process.stderr.write(`whip_call.mjs: hard timeout: no result after ${hardTimeoutS} s\n`);
    // Playwright kills the Chromium it launched when this process exits.
    fs.rmSync(runDir, { recursive: true, force: true });
    process.exit(3);
  }, hardTimeoutS * 1000);

  let result;
  try {
    server = await servePage();
    const pageUrl = `http://127.0.0.1:${server.address().port}/`;
    try {
      browser = await chromium.launch({
        executablePath: CHROMIUM,
        headless: true,
        ignoreDefaultArgs: true, // Playwright's defaults add --mute-audio and ~20 more; the flags above are all
        args: chromiumArgs(o.wav, userDataDir),
        timeout: 20000,
      });
    } catch (e) {
      throw new HarnessError(`Chromium (${CHROMIUM}) failed to launch: ${e.message}`);
    }
    const context = await browser.newContext();
    const page = await context.newPage();
    if (o.verbose) {
      page.on('console', (m) => process.stderr.write(`page ${m.type()}: ${m.text()}\n`));
    }
    page.on('pageerror', (e) => process.stderr.write(`page error: ${e.message}\n`));
    const wire = watchWire(page, o.selfTest ? null : o.whipUrl);
    await page.goto(pageUrl);
    // A real click (input events): the user activation browsers' autoplay policy asks of an AudioContext.
    await page.click('#start');
    const pageOptions = {
      whipUrl: o.whipUrl,
      token: o.token,
      seconds: o.seconds,
      toneHz: o.toneHz,
      hangup: o.hangup,
      postOnly: o.postOnly,
      connectTimeoutMs: o.connectTimeoutMs,
      minRms: o.minRms,
      sink: o.sink,
    };
    result = await page.evaluate(
      ([selfTest, opts]) => (selfTest ? window.runSelfTest(opts) : window.runCall(opts)),
      [o.selfTest, pageOptions],
    );
    if (!o.selfTest) result.wire = wire;
    result.chromium = browser.version();
  } catch (e) {
    clearTimeout(hardTimeout);
    await cleanup();
    const reason = e instanceof HarnessError ? e.message : `harness failure: ${e.stack || e}`;
    process.stderr.write(`whip_call.mjs: ${reason}\n`);
    process.exit(3);
  }
  clearTimeout(hardTimeout);
  await cleanup();

  if (o.offerFile && result.offer_sdp) fs.writeFileSync(o.offerFile, result.offer_sdp);
  delete result.offer_sdp;
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.exit(0);
}

class HarnessError extends Error {}

main();
