// An operator in a browser: headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core) opens the console, signs in through Tessera's own login page, and acts.
// Usage:
//   node console.mjs revoke BASE USER PASSWORD CLIENT_ID [SCREENSHOT]
//     signs in, checks CLIENT_ID is listed as connected, presses its "Revoke token" button,
//     and prints the page's text; also checks a form posted without the CSRF token is refused
//   node console.mjs refused BASE USER PASSWORD
//     signs in as a user who is not an operator and prints the page it ends on
//   node console.mjs retained BASE USER PASSWORD TOPIC
//     signs in, finds TOPIC among the retained messages, deletes it, prints the page's text
//   node console.mjs pages BASE USER PASSWORD PATH
//     signs in, opens the list at PATH (`/console/tokens?user=bob`), follows its "Next"
//     link, and prints "first A, next B, both C" (rows on each page, rows on both)
import { session } from './chromium.mjs';

const [mode, base, user, password, clientId, shot] = process.argv.slice(2);
const { context, page, fail, done } = await session(40000);
try {
  const errors = [];
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  // Not signed in: the console sends the browser to the authorization page.
  await page.goto(`${base}/console/`);
  if (!page.url().includes('/oauth/authorize')) await fail(`not sent to sign in: ${page.url()}`);
  await page.fill('#username', user);
  await page.fill('#password', password);
  await Promise.all([page.waitForLoadState('load'), page.click('button[value=allow]')]);
  await page.waitForSelector('h1');
  if (mode === 'refused') {
    console.log(await page.textContent('body'));
  } else if (mode === 'revoke') {
    const row = page.locator('tr', { hasText: clientId });
    if (await row.count() !== 1) await fail(`${clientId} not listed: ${await page.textContent('body')}`);
    // A client id with markup is shown as text, never run as markup.
    const markup = '<img src=x onerror=alert(1)>';
    if (!(await page.textContent('main')).includes(markup)) await fail('the markup client id is not shown as text');
    const injected = await page.evaluate(() => document.querySelectorAll('main img, main script').length);
    if (injected !== 0) await fail(`${injected} injected element(s)`);
    // The live counters script runs under the CSP and refreshes from /console/counters.
    const live = await page.waitForResponse((r) => r.url().endsWith('/console/counters'), { timeout: 10000 });
    const counts = await live.json();
    if (live.status() !== 200 || counts.connections < 1) await fail(`counters: ${live.status()} ${JSON.stringify(counts)}`);
    const forged = await context.request.post(`${base}/console/sessions/kick`, { form: { client_id: clientId } });
    if (forged.status() !== 403) await fail(`a form without CSRF token got ${forged.status()}`);
    if (shot) await page.screenshot({ path: shot, fullPage: true });
    await Promise.all([page.waitForLoadState('load'), row.locator('button', { hasText: 'Revoke token' }).click()]);
    await page.waitForSelector('[role=status], [role=alert]');
    if (errors.length) await fail(`console errors: ${errors.join('; ')}`);
    console.log(await page.textContent('body'));
  } else if (mode === 'retained') {
    await page.goto(`${base}/console/retained?prefix=${encodeURIComponent(clientId.split('/')[0] + '/')}`);
    const row = page.locator('tr', { hasText: clientId });
    if (await row.count() !== 1) await fail(`${clientId} not listed: ${await page.textContent('body')}`);
    await Promise.all([page.waitForLoadState('load'), row.locator('button', { hasText: 'Delete' }).click()]);
    await page.waitForSelector('[role=status], [role=alert]');
    console.log(await page.textContent('body'));
  } else if (mode === 'pages') {
    await page.goto(`${base}${clientId}`);
    const ids = async () => page.locator('main table tbody tr td:first-child').allTextContents();
    const first = await ids();
    const next = page.locator('a', { hasText: 'Next' });
    if (await next.count() !== 1) await fail(`no Next link after ${first.length} rows`);
    await Promise.all([page.waitForLoadState('load'), next.click()]);
    await page.waitForSelector('h1');
    const second = await ids();
    const both = first.filter((id) => second.includes(id)).length;
    console.log(`first ${first.length}, next ${second.length}, both ${both}`);
  } else {
    await fail(`unknown mode ${mode}`);
  }
  await done();
} catch (e) {
  await fail(e);
}
