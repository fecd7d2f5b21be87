// Bundle src/ into dist/: dist/index.html + dist/assets/app-<hash>.{js,css} (+ chunk-<hash>.js
// for code loaded on demand). Content hashes in
// the asset names let the server mark them immutable; index.html is revalidated.
//   node build.mjs           minified production build
//   node build.mjs --dev     adds source maps
//
// Files whose bytes did not change are not rewritten: cargo watches web/dist (mtimes), so an
// unchanged rebuild must not make it re-embed the assets and relink `infinibay`.
import * as esbuild from 'esbuild';
import { mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, 'dist');
const dev = process.argv.includes('--dev');

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
  // noVNC (the Console tab) is imported dynamically and lands in a chunk of its own, loaded
  // only when a console is opened.
  splitting: true,
  chunkNames: 'chunk-[hash]',
  metafile: true,
  write: false,
  logLevel: 'warning',
});

const files = new Map(result.outputFiles.map((f) => [relative(dist, f.path), Buffer.from(f.contents)]));
const names = [...files.keys()].map((p) => basename(p));
const js = names.find((f) => /^app-[A-Z0-9]+\.js$/.test(f));
const css = names.find((f) => /^app-[A-Z0-9]+\.css$/.test(f));
if (!js || !css) throw new Error(`unexpected build outputs: ${names.join(', ')}`);
const template = await readFile(join(here, 'src/index.html'), 'utf8');
files.set('index.html', Buffer.from(template.replace('%APP_JS%', js).replace('%APP_CSS%', css)));
// GraphiQL (web/graphiql, built first by scripts/build-web) beside the dashboard's assets, and
// its page dist/graphiql.html, which the server answers GET /graphql with when api.graphiql is
// on.
const graphiqlNames = await readdir(join(here, 'graphiql/dist')).catch(() => []);
for (const name of graphiqlNames) {
  files.set(join('assets/graphiql', name), await readFile(join(here, 'graphiql/dist', name)));
}
const graphiqlJs = graphiqlNames.find((f) => /^graphiql-[A-Z0-9]+\.js$/.test(f));
const graphiqlCss = graphiqlNames.find((f) => /^graphiql-[A-Z0-9]+\.css$/.test(f));
if (graphiqlJs && graphiqlCss) {
  const page = await readFile(join(here, 'graphiql/src/graphiql.html'), 'utf8');
  files.set('graphiql.html', Buffer.from(page.replace('%GRAPHIQL_JS%', graphiqlJs).replace('%GRAPHIQL_CSS%', graphiqlCss)));
}

async function existing(dir) {
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
  const out = [];
  for (const e of entries) {
    const path = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await existing(path)));
    else out.push(relative(dist, path));
  }
  return out;
}

let written = 0;
for (const [rel, bytes] of files) {
  const path = join(dist, rel);
  const old = await readFile(path).catch(() => null);
  if (old && old.equals(bytes)) continue;
  await mkdir(dirname(path), { recursive: true });
  await writeFile(path, bytes);
  written += 1;
}
const stale = (await existing(dist)).filter((rel) => !files.has(rel));
await Promise.all(stale.map((rel) => rm(join(dist, rel))));

const sizes = [...files].map(([rel, bytes]) => `${rel} ${(bytes.length / 1024).toFixed(1)} KiB`);
console.log(`web/dist: ${sizes.join(', ')} (${written} written, ${stale.length} removed)`);
