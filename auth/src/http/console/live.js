// Refreshes the counters on the console's home page every 2 s. The page works without it.
(function () {
  if (!document.getElementById('c-connections')) return;
  async function tick() {
    try {
      const r = await fetch('/console/counters', { credentials: 'same-origin' });
      if (!r.ok) return;
      const v = await r.json();
      for (const [k, n] of Object.entries(v)) {
        const el = document.getElementById('c-' + k);
        if (el) el.textContent = String(n);
      }
    } catch (_) { /* the next tick tries again */ }
  }
  setInterval(tick, 2000);
})();
