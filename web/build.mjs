// Bundle src/ into dist/: dist/index.html + dist/assets/app-<hash>.{js,css}. Content hashes in
// the asset names let the server mark them immutable; index.html is revalidated.
//   node build.mjs           minified production build
//   node build.mjs --dev     adds source maps
import * as esbuild from 'esbuild';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, 'dist');
const dev = process.argv.includes('--dev');

await rm(dist, { recursive: true, force: true });
const result = await esbuild.build({
  absWorkingDir: here,
  entryPoints: { app: 'src/main.js' },
  bundle: true,
  format: 'esm',
  target: ['es2022', 'chrome109', 'firefox115', 'safari16'],
  minify: true,
  sourcemap: dev ? 'linked' : false,
  legalComments: 'eof',
  outdir: join(dist, 'assets'),
  entryNames: '[name]-[hash]',
  metafile: true,
  logLevel: 'warning',
});

const outputs = Object.keys(result.metafile.outputs).map((p) => basename(p));
const js = outputs.find((f) => /^app-[A-Z0-9]+\.js$/.test(f));
const css = outputs.find((f) => /^app-[A-Z0-9]+\.css$/.test(f));
if (!js || !css) throw new Error(`unexpected build outputs: ${outputs.join(', ')}`);
const template = await readFile(join(here, 'src/index.html'), 'utf8');
await writeFile(join(dist, 'index.html'), template.replace('%APP_JS%', js).replace('%APP_CSS%', css));

const sizes = Object.entries(result.metafile.outputs).map(([p, o]) => `${basename(p)} ${(o.bytes / 1024).toFixed(1)} KiB`);
console.log(`web/dist: index.html, ${sizes.join(', ')}`);
