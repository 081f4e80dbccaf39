/**
 * The shipped console (dist/console, written by `npm run build`): JavaScript under 150 KB gzipped, a page with no
 * inline script or style (the CSP allows neither), and no source using dangerouslySetInnerHTML or innerHTML.
 */
import { expect } from 'chai';
import { readdir, readFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const DIST = join(ROOT, 'dist/console');
const WEB = join(ROOT, 'server/console/web');

async function sources(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    if (e.isDirectory()) out.push(...(await sources(join(dir, e.name))));
    else if (e.name.endsWith('.ts')) out.push(join(dir, e.name));
  }
  return out;
}

describe('console: the shipped bundle', () => {
  it('ships index.html, app.js and app.css; the JavaScript is under 150 KB gzipped', async () => {
    const files = (await readdir(DIST)).sort();
    expect(files).to.include.members(['app.css', 'app.js', 'index.html']);
    const js = await readFile(join(DIST, 'app.js'));
    const gz = gzipSync(js, { level: 9 }).length;
    process.stderr.write(`      app.js: ${js.length} bytes, ${gz} bytes gzipped; app.css ${(await readFile(join(DIST, 'app.css'))).length} bytes\n`);
    expect(gz).to.be.below(150 * 1024);
    // Minified: no doc comments or source names left (htm's templates keep their own line breaks).
    expect(js.toString('utf8')).to.not.match(/\/\*\*|sourceMappingURL|\bsetUnauthorizedHandler\b/);
  });

  it('the page has no inline script, style or event handler; it loads app.js and app.css from itself', async () => {
    const page = await readFile(join(DIST, 'index.html'), 'utf8');
    const scripts = [...page.matchAll(/<script\b([^>]*)>([\s\S]*?)<\/script>/gi)];
    expect(scripts).to.have.length(1);
    expect(scripts[0]?.[1]).to.match(/\bsrc="app\.js"/);
    expect(scripts[0]?.[2]?.trim()).to.equal('');
    expect(page).to.not.match(/<style\b|\sstyle=|\son[a-z]+=|javascript:/i);
    expect(page).to.match(/<link rel="stylesheet" href="app\.css"/);
    expect(page).to.not.match(/https?:\/\//);
  });

  it('the browser sources never write HTML from strings', async () => {
    for (const f of await sources(WEB)) {
      const text = await readFile(f, 'utf8');
      expect(text, f).to.not.match(/dangerouslySetInnerHTML|innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function/);
    }
  });
});
