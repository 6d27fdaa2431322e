#!/usr/bin/env node
// Runs the compiled CLI (`npm run build` → dist/; `npm install` and `npm pack` build it). A checkout that has not
// been built yet still works, through tsx, only slower to start.
import { existsSync } from 'node:fs';

const compiled = new URL('../dist/main.js', import.meta.url);
if (existsSync(compiled)) {
  await import(compiled.href);
} else {
  const { register } = await import('tsx/esm/api');
  register();
  await import('../src/main.ts');
}
