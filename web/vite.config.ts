import { fileURLToPath } from 'node:url';
import react from '@vitejs/plugin-react';
import { defineConfig } from 'vite';

/**
 * The portal is served by provisiond itself under /portal, so every asset URL starts there. Nothing is fetched from
 * another origin at run time: fonts are the system's, scripts and styles are bundled.
 */
const root = fileURLToPath(new URL('.', import.meta.url));

export default defineConfig({
  root,
  base: '/portal/',
  plugins: [react()],
  build: {
    outDir: fileURLToPath(new URL('./dist/', import.meta.url)),
    emptyOutDir: true,
    sourcemap: false,
    // One small app: a single chunk keeps the served file list short.
    chunkSizeWarningLimit: 1024,
  },
  logLevel: 'warn',
});
