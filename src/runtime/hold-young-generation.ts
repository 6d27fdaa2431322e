import { holdYoungGeneration, ownedByOperator } from './young-generation.js';

/**
 * The first import of src/main.ts, so it runs before any other module is loaded: for `provisiond serve`, V8's young
 * generation is held at its first size from the start, not only once `serve` runs. Loading the CLI and the server's
 * modules before that grew it to 8 MiB, and the collection once listening (collectStartupGarbage) gave it back only
 * now and then: idle at 94–104 MiB with 8–16 MiB of young generation, against 85–94 MiB with 1 held from here
 * (bench/README.md, "session 24"). Any other command is left as V8 runs it.
 */
if (process.argv.slice(2).includes('serve') && !ownedByOperator(process.execArgv, process.env.NODE_OPTIONS)) holdYoungGeneration();
