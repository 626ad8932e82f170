// A person in a browser: headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core)
// opens one of Tessera's pages, types a user name and password, and presses the button.
// Usage:
//   node browser_login.mjs authorize URL REDIRECT_PREFIX USER PASSWORD [SCREENSHOT]
//     prints the URL the browser was sent to (with the code or token)
//   node browser_login.mjs device URL USER PASSWORD [SCREENSHOT]
//     prints the text of the result page
import { chromium } from 'playwright-core';

const [mode, url, ...rest] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
const fail = async (why) => { console.error(String(why)); await browser.close(); process.exit(1); };
const timer = setTimeout(() => fail('timed out'), 30000);
try {
  // The broker's development certificate is self-signed.
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  if (mode === 'authorize') {
    const [prefix, user, password, shot] = rest;
    await page.goto(url);
    await page.fill('#username', user);
    await page.fill('#password', password);
    if (shot) await page.screenshot({ path: shot });
    await Promise.all([page.waitForURL((u) => u.href.startsWith(prefix)), page.click('button[value=allow]')]);
    console.log(page.url());
  } else if (mode === 'device') {
    const [user, password, shot] = rest;
    await page.goto(url);
    await page.fill('#username', user);
    await page.fill('#password', password);
    await Promise.all([page.waitForLoadState('load'), page.click('button[value=allow]')]);
    await page.waitForSelector('h1');
    if (shot) await page.screenshot({ path: shot });
    console.log(await page.textContent('body'));
  } else {
    await fail(`unknown mode ${mode}`);
  }
  await browser.close();
  clearTimeout(timer);
  process.exit(0);
} catch (e) {
  await fail(e);
}
