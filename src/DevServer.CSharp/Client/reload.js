// Live reload (served by the built-in watch plugin at /__realtime__/reload.js). The plugin imports
// it in every page with the paths that changed; a page reloads when it uses one of them, and swaps
// a changed stylesheet it links without reloading.

const tag = '[realtime]';

function pathOf(href) {
  try {
    const url = new URL(href, document.baseURI);
    if (url.origin !== location.origin) return null;
    const path = decodeURIComponent(url.pathname);
    return path.endsWith('/') ? path + 'index.html' : path;
  } catch {
    return null;
  }
}

function usedPaths() {
  const used = new Set([pathOf(location.href)]);
  for (const entry of performance.getEntriesByType('resource')) used.add(pathOf(entry.name));
  for (const element of document.querySelectorAll('script[src], link[href], img[src], source[src], iframe[src]')) {
    used.add(pathOf(element.src || element.href));
  }
  return used;
}

function swapStylesheet(path) {
  const links = [...document.querySelectorAll('link[rel~="stylesheet"][href]')].filter(link => pathOf(link.href) === path);
  for (const link of links) {
    const next = link.cloneNode();
    const url = new URL(link.href);
    url.searchParams.set('realtime-reload', String(Date.now()));
    next.href = url.href;
    const done = () => link.remove();
    next.addEventListener('load', done, { once: true });
    next.addEventListener('error', done, { once: true });
    link.after(next);
  }
  if (links.length > 0) console.info(`${tag} swapped stylesheet ${path}`);
  return links.length > 0;
}

export default function reload(changedPaths) {
  const used = usedPaths();
  let reloadPage = false;
  for (const path of changedPaths) {
    if (path.endsWith('.css') && swapStylesheet(path)) continue;
    if (used.has(path)) reloadPage = true;
  }
  if (reloadPage) {
    console.info(`${tag} reloading: ${changedPaths.join(', ')} changed`);
    location.reload();
  }
}
