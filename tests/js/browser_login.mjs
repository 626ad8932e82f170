// A person in a browser: headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core)
// opens one of Tessera's pages, types a user name and password, and presses the button.
// Usage:
//   node browser_login.mjs authorize URL REDIRECT_PREFIX USER PASSWORD [SCREENSHOT]
//     prints the URL the browser was sent to (with the code or token)
//   node browser_login.mjs device URL USER PASSWORD [SCREENSHOT]
//     prints the text of the result page (device-deny: presses Deny instead)
import { session } from './chromium.mjs';

const [mode, url, ...rest] = process.argv.slice(2);
const { page, fail, done } = await session(30000);
try {
  if (mode === 'authorize') {
    const [prefix, user, password, shot] = rest;
    await page.goto(url);
    await page.fill('#username', user);
    await page.fill('#password', password);
    if (shot) await page.screenshot({ path: shot });
    await Promise.all([page.waitForURL((u) => u.href.startsWith(prefix)), page.click('button[value=allow]')]);
    console.log(page.url());
  } else if (mode === 'device' || mode === 'device-deny') {
    const [user, password, shot] = rest;
    await page.goto(url);
    await page.fill('#username', user);
    await page.fill('#password', password);
    const button = mode === 'device' ? 'button[value=allow]' : 'button[value=deny]';
    await Promise.all([page.waitForLoadState('load'), page.click(button)]);
    await page.waitForSelector('h1');
    if (shot) await page.screenshot({ path: shot });
    console.log(await page.textContent('body'));
  } else {
    await fail(`unknown mode ${mode}`);
  }
  await done();
} catch (e) {
  await fail(e);
}
