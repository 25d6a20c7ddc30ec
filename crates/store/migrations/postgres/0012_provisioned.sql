-- Objects applied from `serve --provision DIR` files name their source file here; the API
-- refuses to change or delete them (409 provisioned). NULL: managed through the API.
ALTER TABLE connections ADD COLUMN provisioned TEXT;
ALTER TABLE credentials ADD COLUMN provisioned TEXT;
