import { loadConfig } from '../src/config/config.js';
import { openStore } from '../src/store/open-store.js';
import { freshPostgresDatabase } from './postgres.js';
import { runStoreContract } from './store-contract.js';

const open = async (url: string) => (await openStore(loadConfig({ flags: { store: url, storePoolSize: 4 } }))).store;

runStoreContract('PostgreSQL', async () => open(await freshPostgresDatabase(async (url) => (await open(url)).close())));
