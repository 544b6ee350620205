// Opens a study in OHIF Viewer's built app (its npm package's dist/) over a DICOMweb server, in headless
// Chromium driven by playwright-core, double-clicks the report's (SR) thumbnail, and prints what a radiologist
// would see as one JSON object: the series list, the measurement panel's title and rows, the shapes drawn over
// each image the report references, and every console error, warning and page error.
//
//   node open_report.mjs --dist DIR --dicomweb URL --study UID --out DIR [--chromium PATH] [--timeout S]
//
// The viewer is served on a free loopback port with an app-config.js of one DICOMweb data source at the
// same-origin path /dicom-web, which this server forwards to --dicomweb (no cross-origin requests).
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { chromium } from 'playwright-core';

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
for (const k of ['dist', 'dicomweb', 'study', 'out']) {
  if (!args[k]) {
    console.error(`--${k} is required`);
    process.exit(2);
  }
}
const timeoutMs = 1000 * Number(args.timeout || 60);
const upstream = new URL(args.dicomweb.replace(/\/$/, ''));
fs.mkdirSync(args.out, { recursive: true });

const APP_CONFIG = `window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  showStudyList: true,
  investigationalUseDialog: { option: 'never' },
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  maxNumberOfWebWorkers: 1,
  defaultDataSourceName: 'pacs',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: 'pacs',
    configuration: {
      friendlyName: 'test PACS', name: 'pacs',
      wadoUriRoot: '/dicom-web', qidoRoot: '/dicom-web', wadoRoot: '/dicom-web',
      qidoSupportsIncludeField: false, imageRendering: 'wadors', thumbnailRendering: 'wadors',
      enableStudyLazyLoad: true, supportsFuzzyMatching: false, supportsWildcard: true,
      omitQuotationForMultipartRequest: true,
      bulkDataURI: { enabled: true, relativeResolution: 'studies' },
    },
  }],
};
`;

const TYPES = { '.js': 'text/javascript', '.mjs': 'text/javascript', '.css': 'text/css', '.html': 'text/html',
  '.json': 'application/json', '.wasm': 'application/wasm', '.svg': 'image/svg+xml', '.png': 'image/png',
  '.woff2': 'font/woff2', '.woff': 'font/woff', '.ico': 'image/x-icon' };
const dist = path.resolve(args.dist);

function proxy(req, res) {
  const target = new URL(upstream.pathname + req.url.slice('/dicom-web'.length), upstream);
  const headers = { ...req.headers, host: upstream.host };
  const up = http.request(target, { method: req.method, headers }, (r) => {
    res.writeHead(r.statusCode, r.headers);
    r.pipe(res);
  });
  up.on('error', (e) => {
    res.writeHead(502);
    res.end(String(e));
  });
  req.pipe(up);
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  if (url.pathname === '/dicom-web' || url.pathname.startsWith('/dicom-web/')) return proxy(req, res);
  if (url.pathname === '/app-config.js') {
    res.writeHead(200, { 'content-type': 'text/javascript' });
    return res.end(APP_CONFIG);
  }
  let file = path.join(dist, decodeURIComponent(url.pathname));
  if (!file.startsWith(dist) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
    file = path.join(dist, 'index.html'); // the app's routes (/viewer?...) are the app's own
  }
  res.writeHead(200, { 'content-type': TYPES[path.extname(file)] || 'application/octet-stream' });
  fs.createReadStream(file).pipe(res);
});
await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
const base = `http://127.0.0.1:${server.address().port}`;

const result = { console: [], pageErrors: [], requestsFailed: [], screenshots: [] };
const browser = await chromium.launch({
  executablePath: args.chromium || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
});
async function shot(page, name) {
  const file = path.join(args.out, `${name}.png`);
  await page.screenshot({ path: file });
  result.screenshots.push(file);
}


// the value of fn in the page once it is above 0 and has not changed for a second (or at the timeout)
async function stable(page, fn, timeout) {
  const end = Date.now() + timeout;
  let last = null;
  let since = Date.now();
  for (;;) {
    const value = await page.evaluate(fn);
    if (value !== last) {
      last = value;
      since = Date.now();
    } else if (value > 0 && Date.now() - since >= 1000) {
      return value;
    }
    if (Date.now() > end) return value;
    await page.waitForTimeout(200);
  }
}

let page;
try {
  page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
  page.setDefaultTimeout(timeoutMs);
  page.on('console', (m) => {
    if (m.type() !== 'log' && m.type() !== 'timeEnd') result.console.push({ type: m.type(), text: m.text() });
  });
  page.on('pageerror', (e) => result.pageErrors.push(String(e && e.stack ? e.stack : e)));
  page.on('requestfailed', (r) => result.requestsFailed.push(`${r.url()} ${r.failure() && r.failure().errorText}`));
  await page.addInitScript(() => {
    // the onboarding tour (shepherd.js), shown once per browser profile: marked as shown, as OHIF does
    try {
      localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));
    } catch (e) { /* storage unavailable */ }
  });
  await page.goto(`${base}/viewer?StudyInstanceUIDs=${encodeURIComponent(args.study)}`);
  // the study browser's thumbnails: one per series
  await page.waitForSelector('[data-cy="study-browser-thumbnail"], [data-cy^="study-browser-thumbnail"]');
  await stable(page, () => document.querySelectorAll('[data-cy^="study-browser-thumbnail"]').length, 30000);
  result.tourShown = await page.locator('.shepherd-element').count() > 0;
  result.thumbnails = await page.$$eval('[data-cy^="study-browser-thumbnail"]', (els) =>
    els.map((e) => e.innerText.replace(/\s+/g, ' ').trim()));
  await shot(page, '1-study');
  const sr = page.locator('[data-cy^="study-browser-thumbnail"]').filter({
    has: page.locator('[data-cy="series-modality-label"]', { hasText: /^\s*SR\s*$/ }) });
  if (!(await sr.count())) throw new Error(`no SR series among the thumbnails: ${JSON.stringify(result.thumbnails)}`);
  await sr.first().dblclick();
  await page.waitForFunction(() => document.querySelector('svg.svg-layer text'), null, { timeout: 15000 })
    .catch(() => {});
  await shot(page, '2-report');
  result.previewText = await page.evaluate(() => [...document.querySelectorAll('svg.svg-layer text')]
    .map((t) => t.textContent).join('\n'));
  // OHIF asks whether to track the report's measurements (load them into the measurement panel): yes
  const yes = page.getByRole('button', { name: 'Yes', exact: true });
  await yes.first().waitFor({ timeout: 30000 }).then(() => yes.first().click()).catch(() => {
    result.noTrackingPrompt = true;
  });
  // the measurement panel, opened unless it is: its title "Measurements (N)" and one row per measurement
  if (!(await page.locator('[data-cy="trackedMeasurements-panel"]').isVisible().catch(() => false))) {
    await page.locator('[data-cy="trackedMeasurements-btn"]').first().click();
  }
  await stable(page, () => document.querySelectorAll('[data-cy="data-row"]').length, 30000);
  await shot(page, '3-panel');
  result.panelText = await page.evaluate(() => document.body.innerText);
  const m = result.panelText.match(/Measurements\s*\((\d+)\)/);
  result.measurementsTitle = m ? Number(m[1]) : null;
  result.rows = await page.$$eval('[data-cy="data-row"]', (els) => els.map((e) => e.innerText.replace(/\s+/g, ' ')));
  // each listed measurement, clicked: the viewer jumps to its image; the shapes drawn there are counted
  result.shapesPerRow = [];
  const rows = page.locator('[data-cy="data-row"]');
  for (let i = 0; i < (await rows.count()); i++) {
    await rows.nth(i).click();
    await page.waitForTimeout(300);
    result.shapesPerRow.push(await stable(page, () => [...document.querySelectorAll('svg.svg-layer')]
      .map((svg) => svg.querySelectorAll('polyline, rect, path, polygon').length).reduce((a, b) => a + b, 0), 15000));
    await shot(page, `4-row-${i + 1}`);
  }
  result.bodyText = await page.evaluate(() => document.body.innerText);
} catch (e) {
  result.error = String(e && e.stack ? e.stack : e);
  if (page) await shot(page, 'error').catch(() => {});
} finally {
  await browser.close();
  server.close();
}
process.stdout.write(JSON.stringify(result, null, 1) + '\n');
