/**
 * Builds the web console (server/console/web/) into dist/console/{index.html,app.js,app.css} with esbuild:
 * one minified bundle (Preact + htm included), one stylesheet, and a page with no inline script or style (the
 * console's CSP is `script-src 'self'; style-src 'self'`). Run by `npm run build` after tsc.
 */
import { build } from 'esbuild';
import { copyFile, mkdir, readFile, rename } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root, from dist/server/console/build.js. */
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const WEB = join(ROOT, 'server/console/web');
const OUT = join(ROOT, 'dist/console');

export async function buildConsole(outDir = OUT): Promise<void> {
  await mkdir(outDir, { recursive: true });
  await build({
    entryPoints: { app: join(WEB, 'main.ts'), 'app-style': join(WEB, 'app.css') },
    outdir: outDir,
    bundle: true,
    minify: true,
    format: 'iife',
    target: ['chrome110', 'firefox110', 'safari16'],
    legalComments: 'none',
    sourcemap: false,
    logLevel: 'warning',
    entryNames: '[name]',
  });
  // esbuild names a CSS entry after its key: write it as app.css.
  await rename(join(outDir, 'app-style.css'), join(outDir, 'app.css'));
  const page = await readFile(join(WEB, 'index.html'), 'utf8');
  if (/<script(?![^>]*\bsrc=)|<style|\sstyle=|\son[a-z]+=/i.test(page)) throw new Error('server/console/web/index.html: no inline script or style (CSP)');
  await copyFile(join(WEB, 'index.html'), join(outDir, 'index.html'));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  buildConsole().catch((err: unknown) => {
    console.error(err instanceof Error ? err.message : String(err));
    process.exit(1);
  });
}
