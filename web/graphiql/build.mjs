// Bundle GraphiQL into dist/ (graphiql-<hash>.js, graphiql-<hash>.css, its fonts); web/build.mjs
// copies them into the dashboard's dist/assets/graphiql/ and writes dist/graphiql.html naming
// them (so that the binary embeds them beside the dashboard, cached forever by their hashes).
//   node build.mjs
// Files whose bytes did not change are not rewritten (cargo watches web/dist's mtimes).
import * as esbuild from 'esbuild';
import { mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, 'dist');
const result = await esbuild.build({
  absWorkingDir: here,
  entryPoints: { graphiql: 'src/graphiql.js' },
  bundle: true,
  format: 'esm',
  target: ['es2022', 'chrome109', 'firefox115', 'safari16'],
  minify: true,
  legalComments: 'eof',
  outdir: dist,
  loader: { '.woff2': 'file', '.woff': 'file', '.ttf': 'file', '.svg': 'dataurl' },
  assetNames: '[name]-[hash]',
  entryNames: '[name]-[hash]',
  define: { 'process.env.NODE_ENV': '"production"' },
  write: false,
  logLevel: 'warning',
});
// GraphiQL's stylesheet carries its fonts as data: URLs; the dashboard's CSP (which this page
// shares) takes fonts from this origin only (no `font-src data:`), so they become files beside
// the stylesheet. Icons stay inline (`img-src data:` is allowed).
const fonts = [];
// esbuild's style of content hash (8 characters of base32, upper case): the server caches such
// names forever.
function contentHash(bytes) {
  const digest = createHash('sha256').update(bytes).digest();
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = 0n;
  for (const b of digest.subarray(0, 5)) bits = (bits << 8n) | BigInt(b);
  let out = '';
  for (let i = 7; i >= 0; i -= 1) out += alphabet[Number((bits >> BigInt(i * 5)) & 31n)];
  return out;
}
for (const file of result.outputFiles.filter((f) => f.path.endsWith('.css'))) {
  const css = Buffer.from(file.contents).toString('utf8').replace(
    /url\(\s*(["']?)data:font\/(woff2|woff|ttf|otf);base64,([A-Za-z0-9+/=]+)\1\s*\)/g,
    (_, _quote, kind, base64) => {
      const bytes = Buffer.from(base64, 'base64');
      const name = `font-${contentHash(bytes)}.${kind}`;
      fonts.push({ path: join(dist, name), contents: bytes });
      return `url(/assets/graphiql/${name})`;
    },
  );
  file.contents = Buffer.from(css);
}
result.outputFiles.push(...fonts);
const outputs = new Set(result.outputFiles.map((f) => f.path));
for (const name of await readdir(dist).catch(() => [])) {
  if (!outputs.has(join(dist, name))) await rm(join(dist, name));
}
let written = 0;
for (const file of result.outputFiles) {
  const bytes = Buffer.from(file.contents);
  const old = await readFile(file.path).catch(() => null);
  if (old && old.equals(bytes)) continue;
  await mkdir(dirname(file.path), { recursive: true });
  await writeFile(file.path, bytes);
  written += 1;
}
const sizes = result.outputFiles.map((f) => `${relative(here, f.path)} ${(f.contents.length / 1024).toFixed(1)} KiB`);
console.log(`web/graphiql/dist: ${sizes.join(', ')} (${written} written)`);
