import type { Config } from '../config/config.js';
import type { Store } from '../store/store.js';

/** What every service needs; passed explicitly, never imported. */
export interface ServiceDeps {
  readonly store: Store;
  readonly config: Config;
  readonly now: () => Date;
}
