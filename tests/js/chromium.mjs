// Headless Chromium (Debian's /usr/bin/chromium, or $CHROMIUM) for the browser tests, driven
// by playwright-core: `session(timeoutMs)` gives a page whose context accepts the broker's
// self-signed development certificate, `fail` (prints why, exits 1) and `done` (exits 0).
import { chromium } from 'playwright-core';

export async function session(timeoutMs) {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  const fail = async (why) => { console.error(String(why)); await browser.close(); process.exit(1); };
  const timer = setTimeout(() => fail('timed out'), timeoutMs);
  const done = async () => { await browser.close(); clearTimeout(timer); process.exit(0); };
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  return { context, page, fail, done };
}
