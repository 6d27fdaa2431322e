import { loadConfig } from '../src/config/config.js';
import { openStore } from '../src/store/open-store.js';
import { freshPostgresDatabase } from './postgres.js';
import { runHubStoreContract } from './hub-store-contract.js';
import { runStoreContract } from './store-contract.js';

const openBoth = async (url: string) => openStore(loadConfig({ flags: { store: url, storePoolSize: 4 } }));
const open = async (url: string) => (await openBoth(url)).store;

runStoreContract('PostgreSQL', async () => open(await freshPostgresDatabase(async (url) => (await open(url)).close())));

runHubStoreContract('PostgreSQL', async () => {
  const { store, hubStore } = await openBoth(await freshPostgresDatabase(async (url) => (await open(url)).close()));
  return { store, hubStore, close: () => store.close() };
});
