// Fails when the dashboard's own sources use an HTML sink. Guest data (process names, command
// output, service descriptions…) must only ever become text: the code builds DOM with
// createElement/append/textContent (src/dom.js), so no sink is needed anywhere, and forbidding
// them outright is simpler and stricter than judging which uses carry data.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const src = join(here, '..', 'src');

const SINKS = [
  [/\.innerHTML\b/, 'innerHTML'],
  [/\.outerHTML\b/, 'outerHTML'],
  [/\binsertAdjacentHTML\b/, 'insertAdjacentHTML'],
  [/\bdocument\.write(ln)?\b/, 'document.write'],
  [/\bcreateContextualFragment\b/, 'createContextualFragment'],
  [/\bDOMParser\b/, 'DOMParser'],
  [/\bsetHTMLUnsafe\b|\bparseHTMLUnsafe\b/, 'setHTMLUnsafe/parseHTMLUnsafe'],
  [/\bsrcdoc\b/, 'srcdoc'],
  [/\beval\s*\(/, 'eval'],
  [/\bnew\s+Function\s*\(/, 'new Function'],
  [/setAttribute\(\s*['"]on/i, 'setAttribute("on…")'],
  [/['"]javascript:/i, 'javascript: URL'],
];

function files(dir) {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? files(path) : /\.(m?js|ts)$/.test(name) ? [path] : [];
  });
}

const problems = [];
for (const file of files(src)) {
  readFileSync(file, 'utf8').split('\n').forEach((line, i) => {
    for (const [pattern, name] of SINKS) {
      if (pattern.test(line)) problems.push(`${relative(join(here, '..'), file)}:${i + 1}: ${name}: ${line.trim()}`);
    }
  });
}
if (problems.length) {
  console.error(`HTML sinks in web/src (render guest data with textContent / dom.js h()):\n${problems.join('\n')}`);
  process.exit(1);
}
console.log(`no HTML sinks in ${files(src).length} source files`);
